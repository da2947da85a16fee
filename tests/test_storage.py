"""Storage: both backends through the same tests, signed URLs against a real S3 server.

The S3 side runs against SeaweedFS (``tests/s3server.py``), started once per session, because it
really checks SigV4: tampered, expired and wrong-secret URLs must get 403, which moto never gives.
No mocks: failure tests use real sockets that refuse, hang up, or answer 503.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit
from uuid import UUID, uuid4

import httpx
import pytest
import trio

from photobot.errors import InvalidInput, NotFound, PhotobotError, StorageError
from photobot.storage import (
    CHUNK_SIZE,
    InvalidKey,
    LocalStorage,
    ObjectNotFound,
    ObjectTooLarge,
    S3Storage,
    SignatureError,
    SignatureExpired,
    SignatureInvalid,
    Storage,
    StorageAccessDenied,
    content_disposition,
    job_input_key,
    job_output_key,
    optimized_key,
    raw_key,
    sign,
    validate_key,
    verify_signed,
)
from photobot.storage.local import STAGING_DIR
from photobot.storage.s3 import classify
from tests.s3server import S3Server, free_ports, start_weed
from tests.standins.cable import open_cable

BUCKET = "photobot-test"
SIGNING_KEY = b"k" * 32
MiB = 1024 * 1024


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    # Sync and session-scoped: weed takes ~1 s and ~330 MB, so one instance serves every test.
    server = start_weed()
    try:
        yield server
    finally:
        server.stop()


def make_s3(server: S3Server, **kwargs: Any) -> S3Storage:
    options: dict[str, Any] = {
        "endpoint_url": server.endpoint_url,
        "access_key_id": server.access_key,
        "secret_access_key": server.secret_key,
        "force_path_style": True,
        "create_bucket": True,
    }
    options.update(kwargs)
    return S3Storage(options.pop("bucket", BUCKET), **options)


@pytest.fixture(params=["local", "s3"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    backend: Storage
    if request.param == "local":
        backend = LocalStorage(tmp_path / "store", SIGNING_KEY)
    else:
        backend = make_s3(request.getfixturevalue("s3_server"))
    try:
        yield backend
    finally:
        await backend.aclose()


@pytest.fixture
def prefix() -> str:
    # The S3 bucket is shared by all tests: each test writes under its own prefix.
    return f"t/{uuid4().hex[:12]}"


@pytest.fixture
async def s3(s3_server: S3Server) -> AsyncIterator[S3Storage]:
    backend = make_s3(s3_server)
    try:
        yield backend
    finally:
        await backend.aclose()


# -- both backends ---------------------------------------------------------------------------


async def test_protocol_and_check(storage: Storage) -> None:
    assert isinstance(storage, Storage)
    await storage.check()


async def test_put_get_roundtrip(storage: Storage, prefix: str) -> None:
    key = f"{prefix}/photo.jpg"
    data = bytes(range(256)) * 3
    await storage.put(key, data, "image/jpeg")
    assert await storage.get(key) == data
    assert await storage.size(key) == 768
    await storage.put(key, b"replaced", "image/jpeg")  # overwrite in place
    assert await storage.get(key) == b"replaced"
    assert await storage.size(key) == 8
    await storage.put(f"{prefix}/empty.txt", b"", "text/plain")
    assert await storage.get(f"{prefix}/empty.txt") == b""
    assert await storage.exists(f"{prefix}/empty.txt") is True


async def test_put_file_get_to_file_large(storage: Storage, prefix: str, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    data = os.urandom(12 * MiB + 12345)
    src.write_bytes(data)
    key = f"{prefix}/clip.mp4"
    await storage.put_file(key, src, "video/mp4")
    assert await storage.size(key) == len(data)

    dest = tmp_path / "out" / "nested" / "copy.mp4"  # missing parents are created
    await storage.get_to_file(key, dest)
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["copy.mp4"]  # no temp left

    dest.write_bytes(b"old")  # an existing file is replaced
    await storage.get_to_file(key, dest)
    assert dest.stat().st_size == len(data)


async def test_s3_put_file_is_multipart(s3: S3Storage, s3_server: S3Server, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(12 * MiB))
    key = f"t/{uuid4().hex}/multi.bin"
    await s3.put_file(key, src, "application/octet-stream")
    head = s3_server.client().head_object(Bucket=BUCKET, Key=key)  # type: ignore[attr-defined]
    # A multipart ETag is "<md5 of part md5s>-<part count>": 12 MiB in 8 MiB parts = 2 parts.
    assert head["ETag"].strip('"').endswith("-2")
    assert head["ContentType"] == "application/octet-stream"


async def test_open_read_streams_in_chunks(storage: Storage, prefix: str) -> None:
    key = f"{prefix}/stream.bin"
    data = os.urandom(3 * CHUNK_SIZE + CHUNK_SIZE // 2)
    await storage.put(key, data, "application/octet-stream")
    chunks: list[bytes] = []
    async with storage.open_read(key) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    assert [len(c) for c in chunks] == [CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE // 2]
    assert b"".join(chunks) == data

    # Leaving early releases the file/connection and does not hang.
    with trio.fail_after(5):
        async with storage.open_read(key) as stream:
            async for chunk in stream:
                assert chunk == data[:CHUNK_SIZE]
                break
    assert await storage.get(key) == data  # still readable afterwards


async def test_delete_and_exists(storage: Storage, prefix: str) -> None:
    key = f"{prefix}/gone.png"
    await storage.put(key, b"png", "image/png")
    assert await storage.exists(key) is True
    await storage.delete(key)
    assert await storage.exists(key) is False
    await storage.delete(key)  # deleting a missing key is not an error
    with pytest.raises(ObjectNotFound):
        await storage.get(key)


async def test_missing_key_is_object_not_found(
    storage: Storage, prefix: str, tmp_path: Path
) -> None:
    key = f"{prefix}/never-written.jpg"
    assert await storage.exists(key) is False
    for call in (
        lambda: storage.get(key),
        lambda: storage.size(key),
        lambda: storage.get_to_file(key, tmp_path / "dl" / "x.jpg"),
    ):
        with pytest.raises(ObjectNotFound) as info:
            await call()
        assert isinstance(info.value, NotFound)
        assert info.value.code == "object_not_found"
    with pytest.raises(ObjectNotFound):
        async with storage.open_read(key):
            pass
    assert not (tmp_path / "dl").exists() or list((tmp_path / "dl").iterdir()) == []


async def test_get_max_bytes(storage: Storage, prefix: str) -> None:
    key = f"{prefix}/limited.bin"
    await storage.put(key, b"x" * 100, "application/octet-stream")
    assert await storage.get(key, max_bytes=100) == b"x" * 100
    with pytest.raises(ObjectTooLarge):
        await storage.get(key, max_bytes=99)


BAD_KEYS = [
    "",
    "/abs/path.jpg",
    "../escape.jpg",
    "a/../../escape.jpg",
    "a/./b.jpg",
    "a//b.jpg",
    "dir/",
    "back\\slash.jpg",
    "nul\x00byte.jpg",
    "new\nline.jpg",
    "del\x7f.jpg",
    "c1\x85.jpg",
    "x" * 256,
    "a/" * 600 + "b",
    "surrogate\ud800.jpg",
]


@pytest.mark.parametrize("bad", BAD_KEYS, ids=range(len(BAD_KEYS)))
async def test_invalid_keys_rejected(storage: Storage, bad: str, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"data")
    calls = [
        lambda: storage.put(bad, b"data", "text/plain"),
        lambda: storage.put_file(bad, src, "text/plain"),
        lambda: storage.get(bad),
        lambda: storage.get_to_file(bad, tmp_path / "out.bin"),
        lambda: storage.delete(bad),
        lambda: storage.exists(bad),
        lambda: storage.size(bad),
        lambda: storage.signed_url(bad, 60),
    ]
    for call in calls:
        with pytest.raises(InvalidKey):
            await call()
    with pytest.raises(InvalidKey):
        async with storage.open_read(bad):
            pass
    assert not (tmp_path / "out.bin").exists()


async def test_bad_arguments_rejected(storage: Storage, prefix: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        await storage.put(f"{prefix}/a.jpg", b"x", "")  # GCS needs a content type
    with pytest.raises(InvalidInput):
        await storage.put_file(f"{prefix}/a.jpg", tmp_path / "missing.jpg", "image/jpeg")
    await storage.put(f"{prefix}/a.jpg", b"x", "image/jpeg")
    for ttl in (0, -5, 7 * 24 * 3600 + 1):
        with pytest.raises(InvalidInput):
            await storage.signed_url(f"{prefix}/a.jpg", ttl)
    with pytest.raises(InvalidInput):
        await storage.signed_url(f"{prefix}/a.jpg", 60, download_name="../x.jpg")


async def test_concurrent_puts(storage: Storage, prefix: str) -> None:
    payloads = {f"{prefix}/c/{i:02d}.bin": os.urandom(50_000 + i) for i in range(16)}
    same_key = f"{prefix}/c/contended.bin"
    versions = [bytes([i]) * 200_000 for i in range(8)]
    async with trio.open_nursery() as nursery:
        for key, data in payloads.items():
            nursery.start_soon(storage.put, key, data, "application/octet-stream")
        for data in versions:
            nursery.start_soon(storage.put, same_key, data, "application/octet-stream")
    for key, data in payloads.items():
        assert await storage.get(key) == data
    # Atomic puts: the winner is one whole version, never a mix or a truncation.
    assert await storage.get(same_key) in versions


# -- local backend specifics -----------------------------------------------------------------


async def test_local_layout_and_atomic_write(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "root", SIGNING_KEY)
    await store.put("events/e1/2026-01-02/j1/input.jpg", b"jpeg", "image/jpeg")
    assert (tmp_path / "root/events/e1/2026-01-02/j1/input.jpg").read_bytes() == b"jpeg"
    assert list((tmp_path / "root" / STAGING_DIR).iterdir()) == []  # temp file was renamed
    with pytest.raises(InvalidKey):
        await store.put(f"{STAGING_DIR}/x.jpg", b"x", "image/jpeg")  # reserved
    with pytest.raises(InvalidKey):  # a file cannot also be a directory
        await store.put("events/e1/2026-01-02/j1/input.jpg/more", b"x", "image/jpeg")
    with pytest.raises(InvalidKey):  # nor a directory a file
        await store.put("events/e1", b"x", "image/jpeg")
    assert await store.exists("events/e1") is False  # a directory is not an object
    with pytest.raises(ObjectNotFound):
        await store.size("events/e1")


async def test_local_symlink_cannot_escape_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    store = LocalStorage(root, SIGNING_KEY)
    with pytest.raises(InvalidKey):
        await store.get("link/secret.txt")
    with pytest.raises(InvalidKey):
        await store.put("link/new.txt", b"x", "text/plain")
    with pytest.raises(InvalidKey):
        await store.put("link/sub/new.txt", b"x", "text/plain")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]  # nothing created


async def test_local_check_creates_root_and_sweeps_stale_temp(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "fresh", SIGNING_KEY)
    await store.check()
    staging = tmp_path / "fresh" / STAGING_DIR
    assert staging.is_dir()
    stale, recent = staging / "put-old.part", staging / "put-new.part"
    stale.write_bytes(b"half")
    recent.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    await store.check()
    assert sorted(p.name for p in staging.iterdir()) == ["put-new.part"]


async def test_local_check_fails_when_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    store = LocalStorage(tmp_path / "file", SIGNING_KEY)
    with pytest.raises(StorageError):
        await store.check()


def test_local_rejects_short_signing_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LocalStorage(tmp_path, b"short")


async def test_local_signed_url_verifies(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path, SIGNING_KEY, url_prefix="/files/")
    key = "events/e 1/2026-01-02/j1/output_1.jpg"
    await store.put(key, b"jpeg", "image/jpeg")
    before = int(time.time())
    url = await store.signed_url(key, 300, download_name="Foto Ánita.jpg")
    parts = urlsplit(url)
    assert parts.path == "/files/events/e%201/2026-01-02/j1/output_1.jpg"
    params = dict(parse_qsl(parts.query))
    assert set(params) == {"exp", "sig", "dl"}
    assert before + 300 <= int(params["exp"]) <= int(time.time()) + 300
    served_key = unquote(parts.path.removeprefix("/files/"))
    grant = verify_signed(served_key, params, SIGNING_KEY, time.time())
    assert grant.key == key
    assert grant.download_name == "Foto Ánita.jpg"
    assert grant.content_disposition == content_disposition("Foto Ánita.jpg")
    with pytest.raises(SignatureExpired):
        verify_signed(served_key, params, SIGNING_KEY, float(params["exp"]))


# -- signing (pure) --------------------------------------------------------------------------


def test_sign_verify_roundtrip_and_tampering() -> None:
    key, exp = "events/e1/2026-01-02/j1/output_1.jpg", 2_000_000_000
    now = 1_900_000_000.0
    params = sign(key, exp, SIGNING_KEY, download_name="photo.jpg")
    assert list(params) == ["exp", "dl", "sig"]
    assert len(params["sig"]) == 43  # unpadded base64url of 32 bytes
    grant = verify_signed(key, params, SIGNING_KEY, now)
    assert (grant.key, grant.expires_at, grant.download_name) == (key, exp, "photo.jpg")

    plain = sign(key, exp, SIGNING_KEY)
    assert "dl" not in plain
    assert verify_signed(key, plain, SIGNING_KEY, now).download_name is None

    tampered: list[tuple[str, dict[str, str]]] = [
        ("events/e1/2026-01-02/j1/output_2.jpg", params),  # other key
        (key, params | {"exp": str(exp + 1)}),  # extended expiry
        (key, params | {"dl": "other.jpg"}),  # other download name
        (key, {k: v for k, v in params.items() if k != "dl"}),  # dropped download name
        (key, plain | {"dl": "added.jpg"}),  # added download name
        (key, params | {"sig": params["sig"][:-1] + ("A" if params["sig"][-1] != "A" else "B")}),
        (key, params | {"sig": ""}),
        (key, params | {"sig": "ü" * 43}),  # non-ASCII must not crash compare_digest
        (key, {"exp": str(exp)}),  # no signature
        (key, {"sig": params["sig"]}),  # no expiry
        (key, params | {"exp": "2e9"}),
        (key, params | {"exp": "-1"}),
        ("../etc/passwd", params),
    ]
    for k, p in tampered:
        with pytest.raises(SignatureInvalid):
            verify_signed(k, p, SIGNING_KEY, now)
    with pytest.raises(SignatureInvalid):
        verify_signed(key, params, b"another-signing-key-32-bytes....", now)


def test_verify_expiry_boundary_and_error_codes() -> None:
    params = sign("a/b.jpg", 1000, SIGNING_KEY)
    assert verify_signed("a/b.jpg", params, SIGNING_KEY, 999.999).expires_at == 1000
    with pytest.raises(SignatureExpired) as info:
        verify_signed("a/b.jpg", params, SIGNING_KEY, 1000.0)
    assert info.value.code == "signature_expired"
    assert isinstance(info.value, SignatureError | PhotobotError)
    # A tampered exp is "invalid" even when it lies in the past: the signature is checked first.
    with pytest.raises(SignatureInvalid) as bad:
        verify_signed("a/b.jpg", params | {"exp": "10"}, SIGNING_KEY, 1000.0)
    assert bad.value.code == "signature_invalid"


def test_content_disposition() -> None:
    assert content_disposition("photo 1.jpg") == (
        "attachment; filename=\"photo 1.jpg\"; filename*=UTF-8''photo%201.jpg"
    )
    assert content_disposition('Foto "Ánita" 100%.jpg') == (
        'attachment; filename="Foto __nita_ 100_.jpg"; '
        "filename*=UTF-8''Foto%20%22%C3%81nita%22%20100%25.jpg"
    )


# -- keys ------------------------------------------------------------------------------------


def test_key_builders() -> None:
    day = date(2026, 1, 2)
    assert job_input_key("evt1", "job9", "JPG", day) == "events/evt1/2026-01-02/job9/input.jpg"
    assert job_input_key(12, 34, ".png", datetime(2026, 1, 2, 23, 59)) == (
        "events/12/2026-01-02/34/input.png"
    )
    job = UUID("12345678-1234-5678-1234-567812345678")
    assert job_output_key("evt1", job, 2, "webp", day) == (
        "events/evt1/2026-01-02/12345678-1234-5678-1234-567812345678/output_2.webp"
    )
    assert raw_key("jpg", unix_ms=1700000000123, token="abc123def456") == (
        "raw/1700000000123-abc123def456.jpg"
    )
    fresh = raw_key("png")
    ms, token = fresh.removeprefix("raw/").removesuffix(".png").split("-")
    assert abs(int(ms) - time.time() * 1000) < 60_000 and len(token) == 12
    assert raw_key("png") != fresh
    assert optimized_key("raw/1700000000123-abc123def456.jpg") == (
        "optimized/1700000000123-abc123def456-optimized.webp"
    )
    assert optimized_key("raw/test") == "optimized/test-optimized.webp"
    for built in (fresh, optimized_key(fresh)):
        assert validate_key(built) == built


@pytest.mark.parametrize(
    "build",
    [
        lambda: job_input_key("a/b", "j", "jpg", date(2026, 1, 1)),
        lambda: job_input_key("..", "j", "jpg", date(2026, 1, 1)),
        lambda: job_input_key("e", "", "jpg", date(2026, 1, 1)),
        lambda: job_input_key("e", "j", "jp/g", date(2026, 1, 1)),
        lambda: job_input_key("e", "j", "jpg", "2026-01-01"),
        lambda: job_output_key("e", "j", -1, "jpg", date(2026, 1, 1)),
        lambda: raw_key("jpg", token="XYZ"),
        lambda: optimized_key("optimized/x.webp"),
        lambda: optimized_key("raw/a/b.jpg"),
    ],
)
def test_key_builders_reject_unsafe_parts(build: Any) -> None:
    with pytest.raises(InvalidKey):
        build()


# -- S3: signed URLs against the real server --------------------------------------------------


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True)) | changes
    return urlunsplit(parts._replace(query=urlencode(params)))


async def test_s3_presigned_get(s3: S3Storage) -> None:
    key = f"t/{uuid4().hex}/Foto Ánita #1.jpg"  # spaces, non-ASCII and '#' must be encoded
    await s3.put(key, b"\xff\xd8 real jpeg bytes", "image/jpeg")
    url = await s3.signed_url(key, 60)
    assert url.startswith(f"{s3.endpoint_url}/{BUCKET}/t/")
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url
    async with httpx.AsyncClient(timeout=10) as http:
        ok = await http.get(url)
        assert ok.status_code == 200
        assert ok.content == b"\xff\xd8 real jpeg bytes"
        assert ok.headers["content-type"] == "image/jpeg"

        sig = dict(parse_qsl(urlsplit(url).query))["X-Amz-Signature"]
        flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
        tampered = await http.get(_with_query(url, **{"X-Amz-Signature": flipped}))
        assert tampered.status_code == 403
        assert b"SignatureDoesNotMatch" in tampered.content

        longer = await http.get(_with_query(url, **{"X-Amz-Expires": "3600"}))
        assert longer.status_code == 403  # the expiry is covered by the signature

        other = key.replace("#1", "#2")
        await s3.put(other, b"other object", "image/jpeg")
        parts = urlsplit(url)
        moved = urlunsplit(parts._replace(path=parts.path.replace("%231", "%232")))
        assert moved != url
        assert (await http.get(moved)).status_code == 403


async def test_s3_presigned_download_name(s3: S3Storage) -> None:
    key = f"t/{uuid4().hex}/output_1.jpg"
    await s3.put(key, b"jpeg", "image/jpeg")
    url = await s3.signed_url(key, 60, download_name="Foto Ánita.jpg")
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url)
    assert response.status_code == 200
    assert response.headers["content-disposition"] == content_disposition("Foto Ánita.jpg")
    assert response.content == b"jpeg"


async def test_s3_presigned_expired(s3: S3Storage) -> None:
    key = f"t/{uuid4().hex}/short.jpg"
    await s3.put(key, b"jpeg", "image/jpeg")
    url = await s3.signed_url(key, 1)
    # X-Amz-Date has whole seconds: wait until that second plus the 1 s TTL has surely passed.
    await trio.sleep(int(time.time()) + 2.1 - time.time())
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url)
    assert response.status_code == 403
    assert b"expired" in response.content.lower()


async def test_s3_presigned_wrong_secret(s3_server: S3Server, s3: S3Storage) -> None:
    key = f"t/{uuid4().hex}/x.jpg"
    await s3.put(key, b"jpeg", "image/jpeg")
    wrong_secret = {"secret_access_key": "not-the-secret", "create_bucket": False}
    async with make_s3(s3_server, **wrong_secret) as wrong:
        url = await wrong.signed_url(key, 60)  # presigning is offline: it "works"
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url)
    assert response.status_code == 403
    assert b"SignatureDoesNotMatch" in response.content


async def test_s3_public_endpoint_signs_for_that_host(s3_server: S3Server) -> None:
    # Browsers reach the server as "localhost"; we reach it as 127.0.0.1. The Host header is
    # signed, so the URL must be made for the public name, and fails when rewritten.
    public = s3_server.endpoint_url.replace("127.0.0.1", "localhost")
    async with make_s3(s3_server, public_endpoint_url=public) as store:
        key = f"t/{uuid4().hex}/p.jpg"
        await store.put(key, b"public", "image/jpeg")
        url = await store.signed_url(key, 60)
    assert url.startswith(public + "/")
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url.replace("localhost", "127.0.0.1"))
        assert response.status_code == 403  # made for another host
        response = await http.get(url)
        assert response.status_code == 200
        assert response.content == b"public"


# -- S3: behaviour and failures ----------------------------------------------------------------


async def test_s3_sends_no_checksum_headers(s3: S3Storage, tmp_path: Path) -> None:
    # R2 answers 501 and some MinIO-likes 400 to boto3's default x-amz-checksum-* headers.
    await s3.open()
    sent: list[dict[str, str]] = []

    def record(request: Any, **_: Any) -> None:
        sent.append(
            {
                k.lower(): v.decode() if isinstance(v, bytes) else str(v)
                for k, v in request.headers.items()
            }
        )

    s3._client.meta.events.register("before-send.s3", record)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * MiB))  # over the 8 MiB multipart threshold
    prefix = f"t/{uuid4().hex}"
    await s3.put(f"{prefix}/small.jpg", b"jpeg", "image/jpeg")
    await s3.put_file(f"{prefix}/big.bin", big, "application/octet-stream")
    assert await s3.get(f"{prefix}/small.jpg") == b"jpeg"
    assert len(sent) >= 6  # put, create/2 parts/complete, get
    for headers in sent:
        assert not [h for h in headers if h.startswith("x-amz-checksum") or "sdk-checksum" in h]
    put_headers = [h for h in sent if h.get("content-type") == "image/jpeg"]
    assert put_headers, "ContentType must be sent on put"


async def test_s3_create_bucket_and_missing_bucket(s3_server: S3Server) -> None:
    name = f"pb-{uuid4().hex[:10]}"
    async with make_s3(s3_server, bucket=name, create_bucket=False) as missing:
        with pytest.raises(StorageError) as info:
            await missing.check()
        assert "not found" in str(info.value)
        assert not isinstance(info.value, StorageAccessDenied)
    async with make_s3(s3_server, bucket=name, create_bucket=True) as created:
        await created.check()
        await created.put("a.txt", b"a", "text/plain")
    async with make_s3(s3_server, bucket=name, create_bucket=True) as again:  # idempotent
        assert await again.get("a.txt") == b"a"


async def test_s3_wrong_credentials_are_not_retried(
    s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "wrong-secret-value-1234"
    store = make_s3(s3_server, secret_access_key=secret, create_bucket=False, backoff_base=30.0)
    caplog.set_level(logging.WARNING, logger="photobot.storage.s3")
    start = trio.current_time()
    try:
        with pytest.raises(StorageAccessDenied) as info:
            await store.check()
        with pytest.raises(StorageAccessDenied):
            await store.put("t/x.jpg", b"x", "image/jpeg")
    finally:
        await store.aclose()
    assert trio.current_time() - start < 20  # no backoff sleep (the first would be 30 s)
    assert "retrying" not in caplog.text
    assert info.value.code == "storage_access_denied"
    assert secret not in str(info.value) and s3_server.access_key not in str(info.value)


async def _serve_counting(
    counter: list[int],
    response: bytes | None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A real TCP server: counts connections and answers ``response`` (or hangs up at once)."""

    async def handle(stream: trio.SocketStream) -> None:
        counter.append(1)
        async with stream:
            if response is None:
                return  # hang up without a response
            data = b""
            with trio.move_on_after(2):
                while b"\r\n\r\n" not in data:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    data += chunk
            await stream.send_all(response)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


SLOW_DOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: 84\r\n"
    b"Connection: close\r\n\r\n"
    b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>\n\n\n\n"
)


@pytest.mark.parametrize(
    ("response", "reason"), [(None, "Connection"), (SLOW_DOWN, "SlowDown")], ids=["hangup", "503"]
)
async def test_s3_transient_errors_retry_then_fail(
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    response: bytes | None,
    reason: str,
) -> None:
    counter: list[int] = []
    port = await nursery.start(_serve_counting, counter, response)
    store = S3Storage(
        BUCKET,
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key_id="k",
        secret_access_key="s",
        force_path_style=True,
        max_attempts=4,
        backoff_base=0.05,
        backoff_max=0.2,
        connect_timeout=1,
        read_timeout=2,
    )
    caplog.set_level(logging.WARNING, logger="photobot.storage.s3")
    start = trio.current_time()
    try:
        with pytest.raises(StorageError) as info:
            await store.get("t/a.jpg")
    finally:
        await store.aclose()
    assert len(counter) == 4  # exactly max_attempts requests reached the server
    assert caplog.text.count("retrying") == 3
    assert "after 4 attempts" in str(info.value) and reason in str(info.value)
    assert trio.current_time() - start < 20  # bounded: 4 tries and short back-offs


async def test_s3_closed_port_fails_within_bounded_time() -> None:
    (port,) = free_ports(1)  # nothing listens here: connection refused at once
    store = S3Storage(
        BUCKET,
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key_id="k",
        secret_access_key="secret-never-shown",
        max_attempts=3,
        backoff_base=0.1,
        backoff_max=0.4,
        connect_timeout=30,
    )
    start = trio.current_time()
    with pytest.raises(StorageError) as info:
        await store.check()
    await store.aclose()
    assert trio.current_time() - start < 20  # refused at once, never the 30 s connect timeout
    assert "after 3 attempts" in str(info.value)
    assert "secret-never-shown" not in str(info.value)


async def test_s3_bad_endpoint_is_storage_error() -> None:
    store = S3Storage(BUCKET, endpoint_url="not a url", access_key_id="k", secret_access_key="s")
    with pytest.raises(StorageError, match="client setup failed"):
        await store.check()


def test_backoff_is_full_jitter_and_capped() -> None:
    store = S3Storage(
        BUCKET, access_key_id="k", secret_access_key="s", backoff_base=0.5, backoff_max=3.0
    )
    for attempt, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (10, 3.0)]:
        delays = [store._backoff(attempt) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.8  # spread over the whole range, not a fixed value


def test_classify() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    def client_error(code: str, status: int) -> ClientError:
        return ClientError(
            {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
        )

    assert classify(client_error("NoSuchKey", 404))[0] == "not_found"
    assert classify(client_error("NoSuchBucket", 404))[0] == "fatal"
    assert classify(client_error("SlowDown", 503))[0] == "transient"
    assert classify(client_error("", 500))[0] == "transient"
    assert classify(client_error("TooManyRequests", 429))[0] == "transient"
    assert classify(client_error("SignatureDoesNotMatch", 403))[0] == "denied"
    assert classify(client_error("InvalidArgument", 400))[0] == "fatal"
    assert classify(EndpointConnectionError(endpoint_url="http://x"))[0] == "transient"
    try:
        try:
            raise client_error("SlowDown", 503)
        except ClientError:
            raise RuntimeError("wrapped like boto3's S3UploadFailedError") from None
    except RuntimeError as wrapped:
        assert classify(wrapped)[0] == "transient"  # found through __context__


# -- S3 over a link that drops ------------------------------------------------------------------


async def test_s3_link_pulled_fails_cleanly_then_works_again(
    s3_server: S3Server, prefix: str, tmp_path: Path
) -> None:
    """A real dropped link to the S3 server (tests/standins/cable.py): calls fail with
    StorageError after their retries, no hang, no half-written object; then work again."""
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(24 * 2**20))  # multipart
    async with open_cable(s3_server.endpoint_url) as cable:
        s3 = make_s3(s3_server, endpoint_url=cable.via(s3_server.endpoint_url))
        try:
            await s3.put(f"{prefix}/before", b"x", "text/plain")
            cable.cut()
            with trio.fail_after(60), pytest.raises(StorageError):
                await s3.put(f"{prefix}/during", b"y", "text/plain")
            cable.mend()

            # Cut mid-transfer: the upload fails as a whole, nothing appears under its key.
            async def cut_when_flowing() -> None:
                start = cable.connections
                while cable.connections == start:  # noqa: ASYNC110 (a counter, no event)
                    await trio.sleep(0.005)
                await trio.sleep(0.05)
                cable.cut()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cut_when_flowing)
                with trio.fail_after(120), pytest.raises(StorageError):
                    await s3.put_file(f"{prefix}/big", big, "application/octet-stream")
            cable.mend()
            assert not await s3.exists(f"{prefix}/big")

            await s3.put(f"{prefix}/during", b"y", "text/plain")
            assert await s3.get(f"{prefix}/during") == b"y"
            await s3.put_file(f"{prefix}/big", big, "application/octet-stream")
            assert await s3.size(f"{prefix}/big") == big.stat().st_size
        finally:
            await s3.aclose()
