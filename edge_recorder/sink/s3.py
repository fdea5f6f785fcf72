"""The object store (S3 or MinIO) behind one blocking adapter and one async door.

It implements :class:`~edge_recorder.sink.store.RecordingStore`, the seam the
spool streamer and its targets use (:mod:`edge_recorder.sink.memory` is its
in-memory twin). Design (docs/storage.md has the whole story): two upload
modes (``RECORDING_S3_UPLOAD_MODE``). The default, ``multipart``, drives one
S3 multipart upload directly through :class:`MultipartApi` (see
``edge_recorder/sink/multipart.py``). In the ``chunks`` mode
(``edge_recorder/sink/compose.py``), while recording, the spool file
is uploaded as **chunk objects** ``<prefix><sessionId>/chunks/<start>-<end>``
(see :mod:`edge_recorder.sink.plan`); at stop they are joined **server-side**
into ``<prefix><sessionId>/composite.mp4`` (a multipart upload of S3
``UploadPartCopy`` parts), then deleted. While recording,
:meth:`ObjectStore.roll_up` joins consecutive chunks into one chunk object
with the same compose code (a roll-up), so few objects remain at stop.

A recording never replaces an object: its final write (the Complete in either
mode) carries ``If-None-Match: *`` (see :class:`MultipartApi`), and the
spool streamer checks the key before it (:mod:`edge_recorder.sink.exclusive`).

Why the chunks mode does not use ``put_object(length=-1)`` streaming one multipart upload: minio keeps
that upload's id in memory only, so a crash orphans every part uploaded so far
(invisible until a lifecycle rule aborts it), and its multipart calls
(``_create_multipart_upload``, ``_upload_part``...) are private, so a restart
cannot resume it. Chunk objects are durable progress that any process can list
from the store itself. The compose still uses a multipart upload, but a
short-lived one at stop; a crash in that window leaves an incomplete upload,
which :meth:`ObjectStore.abort_incomplete_uploads` aborts when the upload is
resumed (the bucket's ``AbortIncompleteMultipartUpload`` lifecycle rule is the
backstop). Chunks
nobody composes (a recording never retried, a failed delete) are expired by a
second rule after N days, which filters on the object tag
``edge-recorder-object=chunk`` that every chunk carries (the composed object
is tagged ``recording``). docs/storage.md has both rules' JSON.

:class:`ObjectStore` is blocking (minio is). Trio code uses
:class:`AsyncObjectStore`, which runs every call in a worker thread under its
own ``CapacityLimiter(4)`` (house style: blocking work goes through one door,
and a slow store must not take the threads other work needs).

Every foreign exception (minio ``S3Error``/``ServerError``/
``InvalidResponseError``, urllib3 and socket errors, a credential chain that
finds nothing) becomes :class:`~edge_recorder.errors.StorageError`, with
``destination=True`` when the user's side refused (no bucket, access denied,
bad credentials, quota, KMS key) and False for ours or transient failures.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import io
import logging
import os
import urllib.parse
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar

import certifi
import trio
import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource, Tags
from minio.datatypes import CompleteMultipartUploadResult
from minio.credentials.credentials import Credentials
from minio.credentials.providers import (
    AWSConfigProvider,
    ChainedProvider,
    EnvAWSProvider,
    IamAwsProvider,
    Provider,
)
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from minio.helpers import md5sum_hash
from minio.sse import Sse, SseCustomerKey, SseKMS, SseS3
from minio.xml import Element, SubElement, getbytes

from edge_recorder.config import S3Settings
from edge_recorder.errors import StorageError
from edge_recorder.sink.store import OBJECT_KIND_TAG, UPLOAD_TOKEN_HEADER, ObjectInfo, RecordingStore, StoredPart
from edge_recorder.sink.plan import (
    COMPOSITE_ASSET,
    MAX_COMPOSE_SOURCES,
    Chunk,
    asset_content_type,
    asset_key,
    chunk_key,
    chunks_prefix,
    is_session_upload_key,
    parse_chunk_key,
    session_prefix,
)

__all__ = [
    "OBJECT_KIND_TAG",
    "UPLOAD_TOKEN_HEADER",
    "AsyncObjectStore",
    "MultipartApi",
    "ObjectInfo",
    "ObjectStore",
    "StoredPart",
    "classify_s3_error",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


def _kind_tags(kind: str) -> Tags:
    tags = Tags.new_object_tags()
    tags[OBJECT_KIND_TAG] = kind
    return tags


# S3's largest single PUT (and largest part): 5 GiB.
_MAX_SINGLE_PUT_BYTES = 5 * 1024**3
# S3's largest part, also for UploadPartCopy: bigger compose sources are copied in ranges.
_MAX_PART_BYTES = 5 * 1024**3
# Listing rounds of abort_incomplete_uploads (1000 uploads each): a bound, not a limit met in practice.
_ABORT_ROUNDS_MAX = 100
# Pages of ListParts (1000 parts each): S3 allows 10 000 parts.
_LIST_PARTS_PAGES_MAX = 11
# Worker threads one store may occupy at once (house style §5: its own limiter).
STORE_THREADS = 4
# A download's pieces: what one read of the response hands to its writer.
DOWNLOAD_PIECE_BYTES = 1 << 20

# S3 error codes that mean the user's destination refused us: retrying does
# not help until someone fixes the bucket, the credentials or the key.
_DESTINATION_CODES = frozenset(
    {
        "AccessDenied",
        "AccountProblem",
        "AllAccessDisabled",
        "AuthorizationHeaderMalformed",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidBucketName",
        "InvalidBucketState",
        "InvalidObjectState",
        "InvalidSecurity",
        "InvalidToken",
        "KMS.DisabledException",
        "KMS.KMSInvalidStateException",
        "KMS.NotFoundException",
        "KMSAccessDenied",
        "NoSuchBucket",
        "NotSignedUp",
        "PermanentRedirect",
        "QuotaExceeded",
        "ServiceQuotaExceeded",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
        "XMinioAdminBucketQuotaExceeded",
        "XMinioStorageFull",
    }
)
# Codes that are transient whatever their HTTP status says.
# ConditionalRequestConflict (409): a concurrent conditional write to the key;
# the retry gets a clear answer (the object, or PreconditionFailed).
_TRANSIENT_CODES = frozenset(
    {
        "ConditionalRequestConflict",
        "InternalError",
        "OperationAborted",
        "RequestTimeout",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeTooSkewed",
    }
)


def classify_s3_error(code: str | None, status: int | None) -> bool:
    """Whether an S3 error response is the destination's fault (True) or ours/transient (False).

    Known codes decide; otherwise a 4xx status is the destination's and
    anything else (5xx, none) is transient.
    """
    if code in _DESTINATION_CODES:
        return True
    if code in _TRANSIENT_CODES:
        return False
    return status is not None and 400 <= status < 500


def _translate(what: str, exc: BaseException) -> StorageError:
    """One foreign exception as a :class:`StorageError` (the caller raises it ``from exc``)."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, S3Error):
        status = getattr(exc.response, "status", None)
        destination = classify_s3_error(exc.code, status)
        return StorageError(f"{what}: {exc.code}: {exc.message}", destination=destination, code=exc.code)
    if isinstance(exc, ServerError):
        return StorageError(f"{what}: server error {exc.status_code}", destination=False)
    if isinstance(exc, InvalidResponseError):
        return StorageError(f"{what}: the store sent an invalid response: {exc}", destination=False)
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        return StorageError(f"{what}: cannot reach the store: {exc.reason}", destination=False)
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError, MinioException)):
        return StorageError(f"{what}: {type(exc).__name__}: {exc}", destination=False)
    return StorageError(f"{what}: unexpected {type(exc).__name__}: {exc}", destination=False)


def _translated(what: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator: translate foreign exceptions raised by a store method."""

    def decorate(func: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return func(*args, **kwargs)
            except StorageError:
                raise
            except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise _translate(what, exc) from exc

        return wrapper

    return decorate


def ca_bundle(settings: S3Settings) -> str:
    """The CA certificates that verify the store's TLS: ``RECORDING_S3_CA_BUNDLE``, else
    ``SSL_CERT_FILE`` (the OpenSSL convention), else certifi's bundle."""
    if settings.ca_bundle is not None:
        return str(settings.ca_bundle)
    from_env = os.environ.get("SSL_CERT_FILE", "")
    if from_env and os.path.isfile(from_env):
        return from_env
    return str(certifi.where())


class _CredentialChain(Provider):
    """minio's default chain (env, ~/.aws config, IAM), failing as a StorageError.

    ``ChainedProvider`` raises ``ValueError("All providers fail...")``, which
    would look like a bug; no credentials is the destination's problem.
    """

    def __init__(self) -> None:
        self._chain = ChainedProvider([EnvAWSProvider(), AWSConfigProvider(), IamAwsProvider()])

    def retrieve(self) -> Credentials:
        try:
            credentials: Credentials = self._chain.retrieve()
        except (ValueError, MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(
                f"no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                f"or provide them to the default chain (environment, ~/.aws, IAM role): {exc}",
                destination=True,
                code="NoCredentials",
            ) from exc
        return credentials


class _SseKmsDefaultKey(Sse):
    """SSE-KMS with the bucket's (or AWS-managed) default key: no key-id header."""

    def headers(self) -> dict[str, str]:
        return {"X-Amz-Server-Side-Encryption": "aws:kms"}



def _unquote(etag: str | None) -> str:
    return (etag or "").strip('"')


# ----------------------------------------------------------------------------- minio's private multipart API
#
# THE ONE PLACE that calls minio's private multipart methods
# (``_create_multipart_upload``, ``_upload_part``, ``_list_parts``,
# ``_complete_multipart_upload``'s request, ``_upload_part_copy``,
# ``_list_multipart_uploads``, ``_abort_multipart_upload``). Why private methods at all:
#
# * minio's public API (``put_object(length=-1)``, ``fput_object``) does run a
#   multipart upload, but keeps its upload id in memory only: a crash orphans
#   every part sent so far, and a restart cannot continue it. The multipart
#   upload mode (``edge_recorder/sink/multipart.py``) needs the upload id on
#   disk (a sidecar next to the spool) and needs to list, complete or abort an
#   upload a previous process started.
# * The project pins ``minio>=7.2.20,<8``; these names and signatures are
#   stable across 7.2.x. If they change, this class (and the integration tests
#   in ``tests/integration/test_s3_multipart.py``) are what to revisit.
#
# * Never over an existing object: a recording's Complete carries
#   ``If-None-Match: *`` (S3 conditional writes, 2024; MinIO and moto honour
#   it), which minio's ``_complete_multipart_upload`` cannot send, so
#   :meth:`MultipartApi.complete` builds that request itself (same body, same
#   ``_execute``). ``compose_object`` cannot either, so the composed recording
#   is a multipart upload of ``UploadPartCopy`` parts driven from here.
#
# Every method translates foreign errors to StorageError like the rest of this
# file; an upload id the store no longer knows surfaces as
# ``StorageError(code="NoSuchUpload")``, an existing object under an exclusive
# Complete as ``code="PreconditionFailed"``. SSE: the SSE headers (SSE-S3, SSE-KMS
# or SSE-C) go on CreateMultipartUpload; with SSE-C the customer key also goes
# on every UploadPart and on CompleteMultipartUpload, which S3 requires.


class MultipartApi:
    """Blocking S3 multipart calls for one bucket (minio's private API; see the comment above).

    Args:
        client: the store's ``Minio`` client.
        bucket: the bucket.
        sse: SSE for CreateMultipartUpload (None: none).
        ssec: the SSE-C customer key for UploadPart and Complete (None unless SSE-C).
        sse_mode: ``RECORDING_S3_SSE``; decides whether part ETags are MD5s.
    """

    def __init__(
        self, client: Minio, bucket: str, *, sse: Sse | None, ssec: SseCustomerKey | None, sse_mode: str
    ) -> None:
        self._client = client
        self.bucket = bucket
        self._sse = sse
        self._ssec = ssec
        # S3 (and moto, MinIO) report a part's MD5 as its ETag unless the part
        # is encrypted with SSE-KMS or SSE-C.
        self.part_etag_is_md5 = sse_mode in ("none", "AES256")
        # Cleared when the store answers an exclusive Complete with
        # NotImplemented (an S3 clone without conditional writes): the
        # spool streamer's HEAD of the key before Complete is then the only guard.
        self.conditional_writes = True

    @_translated("starting a multipart upload")
    def create(self, key: str, *, content_type: str, kind: str, token: str | None = None) -> str:
        """CreateMultipartUpload of ``key`` (content type, SSE headers, the object-kind tag); the upload id.

        Args:
            token: stored as :data:`UPLOAD_TOKEN_HEADER` metadata on the object.
        """
        headers: dict[str, str | list[str] | tuple[str]] = {"Content-Type": content_type}
        if self._sse is not None:
            headers.update(self._sse.headers())
        headers["x-amz-tagging"] = f"{OBJECT_KIND_TAG}={kind}"
        if token is not None:
            headers[UPLOAD_TOKEN_HEADER] = token
        upload_id: str = self._client._create_multipart_upload(self.bucket, key, headers)
        return upload_id

    @_translated("uploading a part")
    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> str:
        """UploadPart number ``part_number`` (1 to 10 000); its ETag (unquoted)."""
        headers: dict[str, str | list[str] | tuple[str]] | None = (
            dict(self._ssec.headers()) if self._ssec is not None else None
        )
        etag: str = self._client._upload_part(self.bucket, key, data, headers, upload_id, part_number)
        return _unquote(etag)

    @_translated("listing uploaded parts")
    def list_parts(self, key: str, upload_id: str) -> list[StoredPart]:
        """ListParts of the upload (every page), sorted by part number."""
        parts: list[StoredPart] = []
        marker: str | None = None
        for _page in range(_LIST_PARTS_PAGES_MAX):
            result = self._client._list_parts(self.bucket, key, upload_id, max_parts=1000, part_number_marker=marker)
            parts.extend(StoredPart(p.part_number, int(p.size or 0), _unquote(p.etag)) for p in result.parts)
            marker = result.next_part_number_marker
            if not result.is_truncated or not marker:
                break
        parts.sort(key=lambda p: p.number)
        return parts

    @_translated("copying a part")
    def upload_part_copy(self, key: str, upload_id: str, part_number: int, source_key: str, start: int, end: int) -> str:
        """UploadPartCopy of bytes ``[start, end)`` of ``source_key`` (same bucket) as part ``part_number``; its ETag.

        SSE-C: the customer key goes on the source (to read it) and on the part.
        """
        source = ComposeSource(self.bucket, source_key, ssec=self._ssec)
        headers: dict[str, str | list[str] | tuple[str]] = dict(source.gen_copy_headers())
        headers["x-amz-copy-source-range"] = f"bytes={start}-{end - 1}"
        if self._ssec is not None:
            headers.update(self._ssec.headers())
        etag, _modified = self._client._upload_part_copy(self.bucket, key, upload_id, part_number, headers)
        return _unquote(etag)

    @_translated("completing a multipart upload")
    def complete(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]], *, exclusive: bool = False) -> str:
        """CompleteMultipartUpload with ``(part number, etag)`` in order; the object's ETag.

        Args:
            exclusive: send ``If-None-Match: *``: the store refuses with
                ``code="PreconditionFailed"`` when an object exists at ``key``.
                A store that answers NotImplemented is asked again without it
                (and :attr:`conditional_writes` is cleared).
        """
        element = Element("CompleteMultipartUpload")
        for number, etag in parts:
            tag = SubElement(element, "Part")
            SubElement(tag, "PartNumber", str(number))
            SubElement(tag, "ETag", f'"{etag}"')
        body = getbytes(element)
        headers: dict[str, str | list[str] | tuple[str]] = {
            "Content-Type": "application/xml",
            "Content-MD5": str(md5sum_hash(body)),
        }
        if self._ssec is not None:
            headers.update(self._ssec.headers())
        if exclusive and self.conditional_writes:
            try:
                return self._complete(key, upload_id, body, {**headers, "If-None-Match": "*"})
            except S3Error as exc:
                if exc.code != "NotImplemented":
                    raise
                log.warning("the store does not support conditional writes (If-None-Match); completing without")
                self.conditional_writes = False
        return self._complete(key, upload_id, body, headers)

    def _complete(self, key: str, upload_id: str, body: bytes, headers: dict[str, str | list[str] | tuple[str]]) -> str:
        # What minio's _complete_multipart_upload sends, with our headers.
        response = self._client._execute(
            "POST", self.bucket, key, body=body, headers=headers, query_params={"uploadId": upload_id}
        )
        return _unquote(CompleteMultipartUploadResult(response).etag)

    @_translated("aborting a multipart upload")
    def abort(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload (an unknown upload id raises ``code="NoSuchUpload"``)."""
        self._client._abort_multipart_upload(self.bucket, key, upload_id)

    @_translated("listing incomplete multipart uploads")
    def list_uploads(self, prefix: str) -> tuple[list[tuple[str, str]], bool]:
        """One page (up to 1000) of in-progress uploads under ``prefix``: ``[(key, upload id)]``, truncated."""
        listed = self._client._list_multipart_uploads(self.bucket, prefix=prefix, max_uploads=1000)
        found = [(u.object_name, u.upload_id) for u in listed.uploads if u.upload_id]
        return found, bool(listed.is_truncated)


class ObjectStore:
    """Blocking adapter over ``minio.Minio`` for one bucket and prefix.

    Every method may block on the network; from Trio use :class:`AsyncObjectStore`.

    Args:
        settings: ``settings.s3``; ``bucket`` must be set.
        connect_timeout_s: TCP connect timeout per request.
        read_timeout_s: socket read timeout per request (a compose of many
            chunks is many requests, each bounded by this).
        http_retries: urllib3 retries of one request (connection errors and
            500/502/503/504) before the error reaches the caller, who retries
            with its own backoff.

    Raises:
        ValueError: ``settings.bucket`` is None or the endpoint is unusable.
    """

    def __init__(
        self,
        settings: S3Settings,
        *,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 120.0,
        http_retries: int = 2,
    ) -> None:
        if settings.bucket is None:
            raise ValueError("RECORDING_S3_BUCKET is not set")
        self.bucket: str = settings.bucket
        self.prefix = settings.prefix
        self.sse_mode = settings.sse
        if settings.endpoint is None:
            host, secure = "s3.amazonaws.com", True
        else:
            parts = urllib.parse.urlsplit(settings.endpoint)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"bad S3 endpoint {settings.endpoint!r}")
            host, secure = parts.netloc, parts.scheme == "https"
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            maxsize=STORE_THREADS * 2,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_bundle(settings),
            retries=urllib3.Retry(
                total=http_retries,
                backoff_factor=0.2,
                status_forcelist=[500, 502, 503, 504],
            ),
        )
        if settings.access_key_id is not None and settings.secret_access_key is not None:
            self._client = Minio(
                host,
                access_key=settings.access_key_id,
                secret_key=settings.secret_access_key.reveal(),
                session_token=settings.session_token.reveal() if settings.session_token is not None else None,
                secure=secure,
                region=settings.region,
                http_client=http,
            )
        else:
            self._client = Minio(host, secure=secure, region=settings.region, http_client=http, credentials=_CredentialChain())
        # Server-side encryption: ``_sse`` on writes (puts and the compose
        # destination); ``_ssec`` on every read of an SSE-C object (stat, get,
        # and the copy *source* of compose), which S3 cannot decrypt otherwise.
        self._sse: Sse | None
        self._ssec: SseCustomerKey | None = None
        if settings.sse == "AES256":
            self._sse = SseS3()
        elif settings.sse == "aws:kms":
            key_id = settings.sse_kms_key_id
            self._sse = SseKMS(key_id, {}) if key_id is not None else _SseKmsDefaultKey()
        elif settings.sse == "SSE-C":
            if settings.sse_customer_key is None:
                raise ValueError("SSE-C needs RECORDING_S3_SSE_C_KEY")
            self._ssec = SseCustomerKey(base64.b64decode(settings.sse_customer_key.reveal()))
            self._sse = self._ssec
        else:
            self._sse = None
        self.multipart = MultipartApi(self._client, self.bucket, sse=self._sse, ssec=self._ssec, sse_mode=settings.sse)

    # -- keys -----------------------------------------------------------------

    def chunk_key(self, session_id: str, chunk: Chunk, *, asset: str = COMPOSITE_ASSET) -> str:
        """The key of one chunk of ``session_id``'s ``asset``."""
        return chunk_key(self.prefix, session_id, chunk, asset)

    def asset_key(self, session_id: str, asset: str = COMPOSITE_ASSET) -> str:
        """The key of ``session_id``'s ``asset`` (ValueError for a name that is not an asset's)."""
        return asset_key(self.prefix, session_id, asset)

    def composite_key(self, session_id: str) -> str:
        """The key of the composed recording of ``session_id``."""
        return self.asset_key(session_id)

    # -- operations -----------------------------------------------------------

    @_translated("creating the bucket")
    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (tests and development).

        Raises:
            StorageError: the bucket could not be checked or created.
        """
        if not self._client.bucket_exists(self.bucket):
            try:
                self._client.make_bucket(self.bucket)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    @_translated("uploading a chunk")
    def put_chunk(self, key: str, data: bytes) -> str:
        """Store ``data`` as object ``key`` (one PUT), encrypted per the settings.

        Chunks are at most 5 GiB (``RECORDING_S3_PART_SIZE_MIB`` is at most
        5120 MiB; a chunk may exceed it by one fragment).

        Returns:
            The object's ETag.

        Raises:
            StorageError: the store refused or could not be reached.
        """
        result = self._client.put_object(
            self.bucket,
            key,
            io.BytesIO(data),
            len(data),
            content_type="application/octet-stream",
            sse=self._sse,
            # One PUT, never minio's own multipart upload: a chunk is the unit
            # of durable progress, and a multipart upload cut by a crash would
            # only leave invisible parts behind.
            part_size=_MAX_SINGLE_PUT_BYTES,
            tags=_kind_tags("chunk"),
        )
        return _unquote(result.etag)

    @_translated("listing chunks")
    def list_chunks(self, session_id: str, *, asset: str = COMPOSITE_ASSET) -> list[Chunk]:
        """The chunks of ``session_id``'s ``asset`` in the store, sorted by start.

        Keys under the chunk prefix that are not chunk keys are logged and skipped.

        Raises:
            StorageError: the listing failed.
        """
        chunks: list[Chunk] = []
        under = chunks_prefix(self.prefix, session_id, asset)
        for obj in self._client.list_objects(self.bucket, prefix=under, recursive=True):
            name = obj.object_name
            try:
                chunks.append(parse_chunk_key(name))
            except ValueError:
                log.warning("ignoring %r under the chunk prefix: not a chunk key", name)
        chunks.sort()
        return chunks

    @_translated("composing the recording")
    def compose(self, session_id: str, chunks: Sequence[Chunk], *, asset: str = COMPOSITE_ASSET) -> ObjectInfo:
        """Join the asset's ``chunks`` server-side into ``<prefix><sessionId>/<asset>``, never over an object.

        A multipart upload of ``UploadPartCopy`` requests (a source above
        5 GiB is copied in equal ranges), completed with ``If-None-Match: *``.
        SSE-C: the customer key goes on every source read and on the
        destination. Tagged ``recording``, served as the asset's content
        type (``video/mp4`` for ``composite.mp4``).

        Returns:
            The composed object as the store reports it (size from a HEAD).

        Raises:
            StorageError: the store refused; ``code="PreconditionFailed"``: an
                object exists at the key (it is left as it is); more than
                10 000 parts (ours).
            ValueError: ``chunks`` is empty.
        """
        return self._compose(
            self.asset_key(session_id, asset),
            session_id,
            asset,
            chunks,
            content_type=asset_content_type(asset),
            kind="recording",
            exclusive=True,
        )

    @_translated("rolling chunks up")
    def roll_up(self, session_id: str, chunks: Sequence[Chunk], *, asset: str = COMPOSITE_ASSET) -> ObjectInfo:
        """Join consecutive ``chunks`` of the asset server-side into one chunk object spanning them.

        The destination is the chunk key of ``(chunks[0] start, chunks[-1]
        end)``, tagged ``chunk`` (the stray-chunk lifecycle rule applies to
        it) and stored like a chunk (``application/octet-stream``); SSE and
        SSE-C exactly as :meth:`compose`. The sources are left in place: the
        caller deletes them once it has recorded the roll-up.

        Returns:
            The roll-up object as the store reports it (size from a HEAD).

        Raises:
            StorageError: the store refused, or more than 10 000 chunks (ours).
            ValueError: fewer than two chunks, or they are not consecutive.
        """
        if len(chunks) < 2 or any(a[1] != b[0] for a, b in zip(chunks, chunks[1:])):
            raise ValueError("a roll-up joins two or more consecutive chunks")
        key = self.chunk_key(session_id, (chunks[0][0], chunks[-1][1]), asset=asset)
        return self._compose(
            key, session_id, asset, chunks, content_type="application/octet-stream", kind="chunk", exclusive=False
        )

    def _compose(
        self,
        key: str,
        session_id: str,
        asset: str,
        chunks: Sequence[Chunk],
        *,
        content_type: str,
        kind: str,
        exclusive: bool,
    ) -> ObjectInfo:
        """A multipart upload of ``UploadPartCopy`` parts of the asset's ``chunks`` into ``key``, then a HEAD.

        Not minio's ``compose_object``: it cannot complete with
        ``If-None-Match`` (see :class:`MultipartApi`). The chunk sizes are
        known from their ranges, so no HEAD per source either; a source that
        is missing or of another size fails the copy or the size check after.
        On failure the upload is aborted (best effort; a crash leaves it to
        :meth:`abort_incomplete_uploads`).
        """
        if not chunks:
            raise ValueError("nothing to compose")
        pieces = _copy_ranges(chunks)
        if len(pieces) > MAX_COMPOSE_SOURCES:
            raise StorageError(
                f"{len(pieces)} parts exceed the {MAX_COMPOSE_SOURCES} S3 allows; raise RECORDING_S3_PART_SIZE_MIB",
                destination=False,
            )
        # The tag is set explicitly: a recording must never carry the chunk
        # tag the expiry rule matches.
        upload_id = self.multipart.create(key, content_type=content_type, kind=kind)
        try:
            parts = []
            for number, (chunk, start, end) in enumerate(pieces, start=1):
                source = self.chunk_key(session_id, chunk, asset=asset)
                parts.append((number, self.multipart.upload_part_copy(key, upload_id, number, source, start, end)))
            etag = self.multipart.complete(key, upload_id, parts, exclusive=exclusive)
        except BaseException:
            try:
                self.multipart.abort(key, upload_id)
            except StorageError as exc:
                log.warning("cannot abort the compose upload %s of %s: %s", upload_id, key, exc)
            raise
        info = self.stat(key)
        return dataclasses.replace(info, etag=etag or info.etag)

    # -- incomplete multipart uploads ----------------------------------------
    #
    # Goes through :class:`MultipartApi`, the one place that calls minio's
    # private multipart API: minio 7.2 (the pinned line, "minio>=7.2.20,<8")
    # has no public call to list or abort a bucket's in-progress multipart
    # uploads. The compose aborts its own upload when a request
    # fails, but not when the process dies mid-compose, nor when the abort
    # request itself fails (the store went away, which is usually why compose
    # failed). Such an upload is invisible in object listings and billed until
    # the bucket's AbortIncompleteMultipartUpload rule fires (docs/storage.md).
    # If these private names change (they are stable across 7.2.x), this
    # method and the integration test ``test_resume_aborts_a_multipart_upload_
    # left_by_a_crash_mid_compose`` are what to revisit.

    @_translated("aborting incomplete multipart uploads")
    def abort_incomplete_uploads(self, session_id: str, *, asset: str | None = None) -> int:
        """Abort in-progress multipart uploads of ``session_id``: of every asset, or of one.

        ``asset=None``: every upload under ``<prefix><sessionId>/`` (all its
        assets, their composes and roll-ups). An asset: only its key and its
        chunk keys (a roll-up is a compose into a chunk key), so one asset's
        resume never aborts another asset's upload in flight. Safe when
        nothing is in progress. Must not run while the asset composes (the
        uploader calls it before resuming, and after a compose that
        succeeded following a failed one or a failed roll-up, once roll-ups
        have stopped).

        Needs ``s3:ListBucketMultipartUploads`` and ``s3:AbortMultipartUpload``.

        Returns:
            How many uploads were aborted.

        Raises:
            StorageError: the listing or an abort failed.
        """
        under = session_prefix(self.prefix, session_id)

        def ours(name: str) -> bool:
            return is_session_upload_key(self.prefix, session_id, name, asset)

        aborted = 0
        # Aborted uploads leave the listing, so each round lists from the start
        # again instead of paging with markers (minio 7.2.20's result also drops
        # NextUploadIdMarker: it stores it under a misspelled attribute).
        # Only this session writes under its prefix, a handful of uploads at
        # most (one or two per asset), so a page without one of ours means none is left.
        for _round in range(_ABORT_ROUNDS_MAX):
            listed, truncated = self.multipart.list_uploads(under)
            found = [(name, upload_id) for name, upload_id in listed if ours(name)]
            for name, upload_id in found:
                try:
                    self.multipart.abort(name, upload_id)
                except StorageError as exc:
                    if exc.code != "NoSuchUpload":  # gone meanwhile: what we wanted
                        raise
                aborted += 1
                log.warning("aborted an incomplete multipart upload of %s (upload id %s)", name, upload_id)
            if not found or not truncated:
                break
        return aborted

    @_translated("deleting chunks")
    def delete_chunks(self, session_id: str, chunks: Sequence[Chunk], *, asset: str = COMPOSITE_ASSET) -> None:
        """Delete the asset's chunk objects (one multi-object DELETE per 1000 keys).

        Missing keys are not an error (S3 deletes are idempotent).

        Raises:
            StorageError: the request failed, or the store refused some keys.
        """
        keys = sorted({self.chunk_key(session_id, c, asset=asset) for c in chunks})
        if not keys:
            return
        errors = list(self._client.remove_objects(self.bucket, [DeleteObject(k) for k in keys]))
        if errors:
            first = errors[0]
            raise StorageError(
                f"deleting chunks: {len(errors)} of {len(keys)} refused, e.g. {first.name}: {first.code} {first.message}",
                destination=classify_s3_error(first.code, None),
                code=first.code,
            )

    @_translated("reading object tags")
    def tags(self, key: str) -> dict[str, str]:
        """The object's tags (tests and verification).

        Raises:
            StorageError: no such object or the request failed.
        """
        tags = self._client.get_object_tags(self.bucket, key)
        return dict(tags or {})

    @_translated("reading object metadata")
    def stat(self, key: str) -> ObjectInfo:
        """HEAD one object (with the SSE-C key when configured).

        Raises:
            StorageError: no such object (``code="NoSuchKey"``) or the request failed.
        """
        obj = self._client.stat_object(self.bucket, key, ssec=self._ssec)
        headers = {str(k).lower(): str(v) for k, v in (obj.metadata or {}).items()}
        return ObjectInfo(self.bucket, key, int(obj.size or 0), _unquote(obj.etag), headers, obj.last_modified)

    def head(self, key: str) -> ObjectInfo | None:
        """:meth:`stat`, or None when there is no object at ``key``.

        Raises:
            StorageError: the request failed (not for a missing object).
        """
        try:
            return self.stat(key)
        except StorageError as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return None
            raise

    @_translated("reading an object")
    def sha256(self, key: str) -> str:
        """SHA-256 of the object's bytes, streamed in 1 MiB blocks (one GET; memory stays small).

        Raises:
            StorageError: no such object or the request failed.
        """
        digest = hashlib.sha256()
        response = self._client.get_object(self.bucket, key, ssec=self._ssec)
        try:
            for block in response.stream(1 << 20):
                digest.update(block)
        finally:
            response.close()
            response.release_conn()
        return digest.hexdigest()

    @_translated("downloading an object")
    def get_bytes(self, key: str) -> bytes:
        """The whole object in memory (tests and verification only).

        Raises:
            StorageError: no such object or the request failed.
        """
        response = self._client.get_object(self.bucket, key, ssec=self._ssec)
        try:
            data: bytes = response.read()
        finally:
            response.close()
            response.release_conn()
        return data

    @_translated("downloading an object")
    def download(self, key: str, write: Callable[[bytes], None], *, max_bytes: int) -> int:
        """Stream the object into ``write`` in 1 MiB pieces; its size (see :meth:`RecordingStore.download`).

        ``write`` must raise our errors, not OSError: an OSError here is
        taken for the connection's.
        """
        info = self.stat(key)
        if info.size > max_bytes:
            raise StorageError(
                f"downloading {key}: {info.size} bytes, more than the {max_bytes} expected", destination=False, code="EntityTooLarge"
            )
        response = self._client.get_object(self.bucket, key, ssec=self._ssec)
        size = 0
        try:
            for piece in response.stream(DOWNLOAD_PIECE_BYTES):
                size += len(piece)
                if size > max_bytes:  # grew since the HEAD: still bounded
                    raise StorageError(
                        f"downloading {key}: more than the {max_bytes} bytes expected", destination=False, code="EntityTooLarge"
                    )
                write(piece)
        finally:
            response.close()
            response.release_conn()
        return size

    @_translated("presigning a URL")
    def presign(self, key: str, expiry_s: int) -> str:
        """A presigned GET URL served as the key's content type (``video/mp4`` for ``.mp4``).

        No request is made (the region must be known or is looked up once).
        An SSE-C object still needs the customer-key headers on the GET, so
        its URL does not play in a browser (docs/storage.md).

        Args:
            key: the object key.
            expiry_s: lifetime, 1 s to 7 days.

        Raises:
            ValueError: ``expiry_s`` is out of range.
            StorageError: the region lookup failed.
        """
        url: str = self._client.presigned_get_object(
            self.bucket,
            key,
            expires=timedelta(seconds=expiry_s),
            response_headers={"response-content-type": asset_content_type(key)},
        )
        return url


def _copy_ranges(chunks: Sequence[Chunk]) -> list[tuple[Chunk, int, int]]:
    """The ``UploadPartCopy`` parts of a compose: ``(chunk, start, end)`` within each chunk object.

    A chunk above S3's 5 GiB part limit is split into equal ranges (each
    above 2.5 GiB, so none is under the 5 MiB minimum of a non-last part).
    """
    pieces: list[tuple[Chunk, int, int]] = []
    for chunk in chunks:
        size = chunk[1] - chunk[0]
        count = max(1, -(-size // _MAX_PART_BYTES))
        bounds = [size * i // count for i in range(count + 1)]
        pieces.extend((chunk, a, b) for a, b in zip(bounds, bounds[1:]))
    return pieces


class AsyncObjectStore:
    """The Trio door to an :class:`ObjectStore`: each call in a worker thread.

    Calls share one ``CapacityLimiter(4)`` owned by this adapter. On
    cancellation the call waits for its thread to finish the request (minio
    cannot be interrupted; requests are bounded by the HTTP timeouts), then
    raises ``trio.Cancelled``; the request's outcome is lost, which is safe
    because every operation here is idempotent.
    """

    def __init__(self, store: ObjectStore, *, threads: int = STORE_THREADS) -> None:
        self.store = store
        self.limiter = trio.CapacityLimiter(threads)

    @property
    def bucket(self) -> str:
        """The bucket."""
        return self.store.bucket

    def asset_key(self, session_id: str, asset: str = COMPOSITE_ASSET) -> str:
        """The key of ``session_id``'s ``asset``."""
        return self.store.asset_key(session_id, asset)

    def composite_key(self, session_id: str) -> str:
        """The key of the composed recording of ``session_id``."""
        return self.store.composite_key(session_id)

    def chunk_key(self, session_id: str, chunk: Chunk, *, asset: str = COMPOSITE_ASSET) -> str:
        """The key of one chunk of ``session_id``'s ``asset``."""
        return self.store.chunk_key(session_id, chunk, asset=asset)

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(func, *args, limiter=self.limiter)

    async def ensure_bucket(self) -> None:
        """See :meth:`ObjectStore.ensure_bucket`."""
        await self._run(self.store.ensure_bucket)

    async def put_chunk(self, key: str, data: bytes) -> str:
        """See :meth:`ObjectStore.put_chunk`."""
        return await self._run(self.store.put_chunk, key, data)

    async def list_chunks(self, session_id: str, *, asset: str = COMPOSITE_ASSET) -> list[Chunk]:
        """See :meth:`ObjectStore.list_chunks`."""
        return await self._run(functools.partial(self.store.list_chunks, session_id, asset=asset))

    async def compose(self, session_id: str, chunks: Sequence[Chunk], *, asset: str = COMPOSITE_ASSET) -> ObjectInfo:
        """See :meth:`ObjectStore.compose`."""
        return await self._run(functools.partial(self.store.compose, session_id, list(chunks), asset=asset))

    async def roll_up(self, session_id: str, chunks: Sequence[Chunk], *, asset: str = COMPOSITE_ASSET) -> ObjectInfo:
        """See :meth:`ObjectStore.roll_up`."""
        return await self._run(functools.partial(self.store.roll_up, session_id, list(chunks), asset=asset))

    async def abort_incomplete_uploads(self, session_id: str, *, asset: str | None = None) -> int:
        """See :meth:`ObjectStore.abort_incomplete_uploads`."""
        return await self._run(functools.partial(self.store.abort_incomplete_uploads, session_id, asset=asset))

    async def delete_chunks(self, session_id: str, chunks: Sequence[Chunk], *, asset: str = COMPOSITE_ASSET) -> None:
        """See :meth:`ObjectStore.delete_chunks`."""
        await self._run(functools.partial(self.store.delete_chunks, session_id, list(chunks), asset=asset))

    async def tags(self, key: str) -> dict[str, str]:
        """See :meth:`ObjectStore.tags`."""
        return await self._run(self.store.tags, key)

    async def stat(self, key: str) -> ObjectInfo:
        """See :meth:`ObjectStore.stat`."""
        return await self._run(self.store.stat, key)

    async def head(self, key: str) -> ObjectInfo | None:
        """See :meth:`ObjectStore.head`."""
        return await self._run(self.store.head, key)

    async def sha256(self, key: str) -> str:
        """See :meth:`ObjectStore.sha256`."""
        return await self._run(self.store.sha256, key)

    async def get_bytes(self, key: str) -> bytes:
        """See :meth:`ObjectStore.get_bytes`."""
        return await self._run(self.store.get_bytes, key)

    async def download(self, key: str, write: Callable[[bytes], None], *, max_bytes: int) -> int:
        """See :meth:`ObjectStore.download` (``write`` runs in the worker thread)."""
        return await self._run(functools.partial(self.store.download, key, write, max_bytes=max_bytes))

    async def presign(self, key: str, expiry_s: int) -> str:
        """See :meth:`ObjectStore.presign`."""
        return await self._run(self.store.presign, key, expiry_s)

    # -- multipart (the multipart upload mode; see MultipartApi) -------------

    @property
    def part_etag_is_md5(self) -> bool:
        """Whether a stored part's ETag is the MD5 of its bytes (no SSE-KMS, no SSE-C)."""
        return self.store.multipart.part_etag_is_md5

    async def create_multipart_upload(self, key: str, *, content_type: str, kind: str, token: str | None = None) -> str:
        """See :meth:`MultipartApi.create`."""
        return await self._run(
            functools.partial(self.store.multipart.create, key, content_type=content_type, kind=kind, token=token)
        )

    async def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> str:
        """See :meth:`MultipartApi.upload_part`."""
        return await self._run(self.store.multipart.upload_part, key, upload_id, part_number, data)

    async def list_parts(self, key: str, upload_id: str) -> list[StoredPart]:
        """See :meth:`MultipartApi.list_parts`."""
        return await self._run(self.store.multipart.list_parts, key, upload_id)

    async def complete_multipart_upload(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> str:
        """See :meth:`MultipartApi.complete`; always exclusive (``If-None-Match: *``).

        Only a recording is completed through here, and a recording never
        replaces an object (:mod:`edge_recorder.sink.exclusive`).
        """
        return await self._run(functools.partial(self.store.multipart.complete, key, upload_id, list(parts), exclusive=True))

    async def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        """See :meth:`MultipartApi.abort`."""
        await self._run(self.store.multipart.abort, key, upload_id)


def _is_a_recording_store(store: AsyncObjectStore) -> RecordingStore:
    return store  # mypy proves the adapter has the Protocol's shape
