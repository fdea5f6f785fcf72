# Task runner recipes; each delegates to scripts/dev, which installs what is
# missing first. `just` itself comes from the rust-just wheel in .venv/bin:
#   bash scripts/dev setup && .venv/bin/just test

set shell := ["bash", "-euo", "pipefail", "-c"]
set positional-arguments

# List the recipes.
default:
    @just --list

# Install Debian packages, .venv and the project, as needed.
setup:
    @bash scripts/dev setup

# Run the demo: just demo --help
demo *args:
    @bash scripts/dev demo "$@"

# Run the tests (default -q): just test tests/unit -x
test *args:
    @bash scripts/dev test "$@"

# Run the benchmark: just bench --help
bench *args:
    @bash scripts/dev bench "$@"

# Byte-compile, syntax-check the scripts, type-check the package (mypy --strict).
lint:
    @bash scripts/dev lint
