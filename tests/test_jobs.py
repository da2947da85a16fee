"""Jobs end to end on a live booth: real HTTP server, real actors, real PostgreSQL, Redis and
storage, and the kie.ai stand-in speaking its real protocol (it fetches our signed input URL)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from PIL import Image

from photobot.providers.kie import KieProvider
from tests.live_booth import KIE_KEY, Live, jpeg, open_live, png_bomb
from tests.standins.cable import open_cable


@pytest.fixture
async def live(database_url: str, redis_url: Any, tmp_path: Path) -> AsyncIterator[Live]:
    async with open_live(database_url, redis_url, tmp_path / "data") as booth:
        yield booth


async def test_submit_follow_and_download_with_the_local_provider(live: Live) -> None:
    event = await live.event()
    session = await live.guest(event["id"])
    r = await live.submit(session, jpeg(1200, 800), styleId="bw", mode="print_4x6")
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued" and job["guest"] == {
        "name": "Ayu Lestari", "whatsapp": "+628123456789",
    }  # fmt: skip
    done = await live.wait_final(job["id"])
    assert done["status"] == "succeeded", done
    assert done["providerUsed"] == "local" and done["progress"] == {"percent": 100, "stage": "done"}
    assert [a["outcome"] for a in done["attemptsDetail"]] == ["succeeded"]
    mine = [e for e in live.events if e.job_id == job["id"]]
    assert list(dict.fromkeys(e.stage for e in mine)) == [
        "preprocessing", "ai_processing", "uploading_output", "done",
    ]  # fmt: skip
    percents = [e.percent for e in mine]
    assert percents == sorted(percents) and percents[-1] == 100
    assert [e.status for e in mine if e.final] == ["succeeded"]

    r = await live.http.get(f"/jobs/{job['id']}/download", headers=live.auth)
    assert r.status_code == 302
    image = await live.http.get(r.headers["Location"])
    assert image.status_code == 200 and image.content.startswith(b"\xff\xd8")
    out = Image.open(io.BytesIO(image.content))
    assert out.size == (1200, 800)  # 3:2 crop of a 3:2 input, not upscaled
    px = out.convert("RGB").getpixel((600, 400))
    assert px[0] == px[1] == px[2]  # bw


async def test_double_submit_with_one_idempotency_key_makes_one_job(live: Live) -> None:
    event = await live.event()
    session = await live.guest(event["id"])
    photo = jpeg()
    results: list[httpx.Response] = []

    async def send() -> None:
        results.append(await live.submit(session, photo, key="click-1"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        nursery.start_soon(send)
    assert sorted(r.status_code for r in results) == [200, 201]
    assert results[0].json()["id"] == results[1].json()["id"]
    again = await live.submit(session, photo, key="click-1")
    assert again.status_code == 200 and again.json()["id"] == results[0].json()["id"]
    reused = await live.submit(session, jpeg(color=(1, 2, 3)), key="click-1")
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "idempotency_reused"
    count = await live.services.db.fetchval(
        "select count(*) from jobs where idempotency_key = 'click-1'"
    )
    assert count == 1


async def test_bad_input_is_a_clear_4xx(live: Live) -> None:
    event = await live.event()
    session = await live.guest(event["id"])
    url = "/jobs"

    async def error(r: httpx.Response, status: int, code: str | None = None) -> None:
        assert r.status_code == status, r.text
        body = r.json()
        assert set(body["error"]) == {"code", "message"}
        if code:
            assert body["error"]["code"] == code, body

    await error(await live.http.post(url, files={"image": ("a.jpg", jpeg())}), 401)
    forged = {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.bad"}
    await error(await live.http.get("/jobs", headers=forged), 401)
    await error(await live.submit(session, b"hello, not a photo"), 422, "unsupported_image")
    await error(await live.submit(session, png_bomb()), 422, "image_too_large")
    await error(await live.submit(session, mode="poster"), 422, "invalid_mode")
    await error(await live.submit(session, styleId="neon"), 422, "invalid_style")
    await error(await live.submit(session, provider="dalle"), 422, "invalid_provider")
    await error(
        await live.submit({**session, "sessionId": "00000000-0000-0000-0000-000000000000"}), 404
    )
    await error(await live.submit({**session, "sessionId": "nope"}), 404)
    other = await live.event()
    await error(
        await live.submit({**session, "eventId": other["id"]}), 422, "session_event_mismatch"
    )
    no_image = await live.http.post(
        url, data={"sessionId": session["sessionId"]}, headers=live.auth
    )
    await error(no_image, 422, "missing_field")
    broken = await live.http.post(
        url,
        content=b'--xx\r\nContent-Disposition: form-data; name="image"\r\n\r\nabc',
        headers={**live.auth, "Content-Type": "multipart/form-data; boundary=xx"},
    )
    assert 400 <= broken.status_code < 500
    too_big = await live.submit(session, b"\xff\xd8\xff" + b"0" * (60 * 1024 * 1024))
    await error(too_big, 413)
    await error(await live.http.get("/jobs/not-a-uuid", headers=live.auth), 404)
    await error(
        await live.http.get("/jobs/00000000-0000-0000-0000-000000000000", headers=live.auth), 404
    )
    await error(await live.http.get("/jobs?status=lost", headers=live.auth), 422, "invalid_status")
    await error(await live.http.get("/jobs?cursor=%%%", headers=live.auth), 422, "invalid_cursor")
    # A PNG named .jpg is taken for what it is.
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(png, "PNG")
    r = await live.submit(session, png.getvalue(), filename="lies.jpg")
    assert r.status_code == 201
    assert (await live.wait_final(r.json()["id"]))["status"] == "succeeded"


async def test_truncated_jpeg_fails_with_a_clear_code(live: Live) -> None:
    event = await live.event()
    session = await live.guest(event["id"])
    whole = jpeg(800, 600)
    r = await live.submit(session, whole[: len(whole) // 2])
    assert r.status_code == 201
    done = await live.wait_final(r.json()["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "image_truncated"
    assert [a["outcome"] for a in done["attemptsDetail"]] == ["fatal_error"]


async def test_kie_success_fetches_our_signed_input(live: Live) -> None:
    event = await live.event()
    session = await live.guest(event["id"])
    r = await live.submit(session, provider="kie")
    done = await live.wait_final(r.json()["id"])
    assert done["status"] == "succeeded", done
    assert done["providerUsed"] == "kie"
    assert done["attemptsDetail"][0]["providerRequestId"]
    image = await live.http.get(done["bestOutputUrl"])
    assert image.status_code == 200 and image.content[:4] == b"\x89PNG"


async def test_kie_transient_errors_are_retried_then_succeed(live: Live) -> None:
    live.kie.add_fault(500, times=2, endpoint="createTask")
    event = await live.event()
    session = await live.guest(event["id"])
    r = await live.submit(session, provider="kie")
    done = await live.wait_final(r.json()["id"])
    assert done["status"] == "succeeded", done
    outcomes = [a["outcome"] for a in done["attemptsDetail"]]
    assert outcomes == ["transient_error", "transient_error", "succeeded"]
    assert done["attempts"] == 3


async def test_kie_fatal_error_fails_at_once(live: Live) -> None:
    live.kie.add_fault(402, times=5, endpoint="createTask")
    event = await live.event()
    session = await live.guest(event["id"])
    r = await live.submit(session, provider="kie")
    done = await live.wait_final(r.json()["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "insufficient_credits"
    assert KIE_KEY not in done["error"]["message"]
    assert [a["outcome"] for a in done["attemptsDetail"]] == ["fatal_error"]


async def test_breaker_opens_and_the_chain_falls_back_to_local(live: Live) -> None:
    live.kie.add_fault(503, times=1000, endpoint="*")
    event = await live.event(fallbackChain=["kie", "local"])
    session = await live.guest(event["id"])
    first = await live.wait_final((await live.submit(session)).json()["id"])
    assert first["status"] == "succeeded" and first["providerUsed"] == "local"
    providers = [a["provider"] for a in first["attemptsDetail"]]
    assert providers == ["kie", "kie", "kie", "local"]
    assert live.services.pool.breakers["kie"].state == "open"
    # With the breaker open, the next job does not even try kie.
    second = await live.wait_final((await live.submit(session)).json()["id"])
    assert [a["provider"] for a in second["attemptsDetail"]] == ["local"]


async def test_timeout_is_transient_and_exhausting_attempts_fails(live: Live) -> None:
    live.services.pool.providers["kie"] = KieProvider(
        KIE_KEY, base_url=live.kie.url, poll_interval=0.05, max_poll_interval=0.05, timeout=0.3
    )
    for _ in range(3):
        live.kie.script_next_task("stuck")
    event = await live.event()
    session = await live.guest(event["id"])
    done = await live.wait_final((await live.submit(session, provider="kie")).json()["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "provider_timeout"
    assert len(done["attemptsDetail"]) == 3


async def test_cancel_running_and_queued_jobs(live: Live) -> None:
    live.services.pool.providers["kie"] = KieProvider(
        KIE_KEY, base_url=live.kie.url, poll_interval=0.05, max_poll_interval=0.05, timeout=60
    )
    for _ in range(3):
        live.kie.script_next_task("stuck")
    event = await live.event()
    session = await live.guest(event["id"])
    running = [(await live.submit(session, provider="kie")).json()["id"] for _ in range(2)]
    queued = (await live.submit(session, provider="kie")).json()["id"]
    with trio.fail_after(10):
        while True:
            states = [
                (await live.http.get(f"/jobs/{j}", headers=live.auth)).json() for j in running
            ]
            if all(
                s["status"] == "running" and s["progress"]["stage"] == "ai_processing"
                for s in states
            ):
                break
            await trio.sleep(0.05)
    r = await live.http.post(f"/jobs/{queued}/cancel", headers=live.auth)
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    r = await live.http.post(f"/jobs/{running[0]}/cancel", headers=live.auth)
    assert r.status_code == 200 and r.json()["cancelRequested"]
    done = await live.wait_final(running[0], timeout=10)
    assert done["status"] == "canceled"
    assert [a["outcome"] for a in done["attemptsDetail"]] == ["canceled"]
    # A canceled job cannot be canceled into something else, and a final one says so.
    again = await live.http.post(f"/jobs/{queued}/cancel", headers=live.auth)
    assert again.json()["status"] == "canceled"
    await live.http.post(f"/jobs/{running[1]}/cancel", headers=live.auth)
    assert (await live.wait_final(running[1], timeout=10))["status"] == "canceled"


async def test_retry_makes_a_child_job(live: Live) -> None:
    live.kie.add_fault(402, times=1, endpoint="createTask")
    event = await live.event()
    session = await live.guest(event["id"])
    parent = await live.wait_final((await live.submit(session, provider="kie")).json()["id"])
    assert parent["status"] == "failed"
    r = await live.http.post(f"/jobs/{parent['id']}/retry", headers=live.auth)
    assert r.status_code == 201
    child = await live.wait_final(r.json()["id"])
    assert child["status"] == "succeeded" and child["parentJobId"] == parent["id"]
    assert child["source"] == "retry"
    still = (await live.http.get(f"/jobs/{parent['id']}", headers=live.auth)).json()
    assert still["status"] == "failed"  # the parent keeps its history


async def test_list_filters_and_pages(live: Live) -> None:
    event = await live.event()
    ayu = await live.guest(event["id"], "Ayu")
    budi = await live.guest(event["id"], "Budi")
    ids = []
    for session in (ayu, budi, ayu, budi, ayu):
        ids.append((await live.submit(session)).json()["id"])
    for job_id in ids:
        await live.wait_final(job_id)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"eventId": event["slug"], "limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = (await live.http.get("/jobs", params=params, headers=live.auth)).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["nextCursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    q = (
        await live.http.get("/jobs", params={"eventId": event["id"], "q": "bud"}, headers=live.auth)
    ).json()
    assert len(q["items"]) == 2 and all(j["guest"]["name"] == "Budi" for j in q["items"])
    done = await live.http.get(
        "/jobs", params={"eventId": event["id"], "status": "succeeded"}, headers=live.auth
    )
    assert len(done.json()["items"]) == 5
    assert all(j["bestOutputUrl"] for j in done.json()["items"])


async def test_event_frame_is_applied_to_every_photo(live: Live) -> None:
    event = await live.event()
    frame = Image.new("RGBA", (300, 200), (0, 0, 0, 0))
    for x in range(300):
        for y in range(12):
            frame.putpixel((x, y), (255, 0, 0, 255))  # an opaque red band along the top
    out = io.BytesIO()
    frame.save(out, "PNG")
    r = await live.http.put(
        f"/events/{event['id']}/frame",
        content=out.getvalue(),
        headers={**live.auth, "Content-Type": "image/png"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["settings"]["frameKey"].endswith(".png")
    not_png = await live.http.put(
        f"/events/{event['id']}/frame", content=jpeg(), headers={**live.auth}
    )
    assert not_png.status_code == 422 and not_png.json()["error"]["code"] == "invalid_frame"

    session = await live.guest(event["id"])
    done = await live.wait_final((await live.submit(session, jpeg(600, 400))).json()["id"])
    assert done["status"] == "succeeded"
    styled = Image.open(io.BytesIO((await live.http.get(done["bestOutputUrl"])).content))
    r_, g_, b_ = styled.convert("RGB").getpixel((300, 5))
    assert r_ > 200 and g_ < 60 and b_ < 60
    r_, g_, b_ = styled.convert("RGB").getpixel((300, 300))
    assert (r_, g_, b_) != (255, 0, 0)


async def test_the_periodic_reclaim_leaves_a_job_claimed_just_now(live: Live) -> None:
    # The pool's reclaim sweep passes the jobs in hand as a snapshot; a job claimed while its
    # query is on the way was updated just now and must not be taken for a stranded one.
    import hashlib
    import uuid

    from photobot import jobs

    event = await live.event()
    # Not the live booth's own name: its pool's reclaim round would race this test for the
    # "stranded" row (it runs at start and every 30 s; on a busy box, after these inserts).
    worker = "booth-under-test"
    ids = {}
    for name, age in [("stranded", 30), ("just_claimed", 0)]:
        ids[name] = await live.services.db.fetchval(
            "insert into jobs (event_id, source, status, input_key, input_sha256, input_type,"
            " input_bytes, claimed_by, started_at, updated_at) values ($1, 'operator',"
            " 'running', 'k/in.jpg', $2, 'image/jpeg', 1, $3, now(),"
            " now() - make_interval(secs => $4)) returning id",
            uuid.UUID(event["id"]), hashlib.sha256(name.encode()).hexdigest(), worker, age,
        )  # fmt: skip
    back = await jobs.requeue_mine(live.services.db, worker, keep=(), min_idle=10)
    assert [str(i) for i in back] == [str(ids["stranded"])]
    status = await live.services.db.fetchval(
        "select status from jobs where id = $1", ids["just_claimed"]
    )
    assert status == "running"


@pytest.mark.parametrize(
    "styling_ends", ["after", "during"], ids=["while-styling", "past-the-styling"]
)
async def test_a_database_outage_mid_job_still_ends_in_one_success(
    database_url: str, redis_url: Any, tmp_path: Path, styling_ends: str
) -> None:
    """The booth reaches PostgreSQL through a cable pulled while kie styles a photo and plugged
    back later: before kie is done, or after (its result cannot be saved until then). Either
    way the job ends succeeded with one attempt, and kie is not paid twice.

    kie finishes when the test opens its gate, never on a count of polls: on a busy machine
    30 polls once outlasted the provider's own 5 s test deadline, which made a second attempt
    (a second paid task) that had nothing to do with the outage."""
    async with (
        open_cable(database_url) as cable,
        open_live(cable.via(database_url), redis_url, tmp_path / "data") as live,
    ):
        live.kie.gate = trio.Event()
        live.services.pool.providers["kie"].timeout = 120  # type: ignore[attr-defined]
        event = await live.event()
        session = await live.guest(event["id"])
        async with live.services.bus.subscribe(capacity=1000) as events:
            job_id = (await live.submit(session, provider="kie")).json()["id"]
            with trio.fail_after(30):
                async for e in events:
                    if e.job_id == job_id and e.stage == "ai_processing":
                        break
        cable.cut()
        if styling_ends == "during":
            live.kie.gate.set()
            with trio.fail_after(30):  # the booth has kie's result in hand, and cannot save it
                while live.kie.calls["files"] < 1:  # noqa: ASYNC110 — the stand-in has no event
                    await trio.sleep(0.05)
            await trio.sleep(1.0)  # and keeps trying for a while
        else:
            await trio.sleep(1.5)
        assert not cable.up and cable.connections >= 1
        cable.mend()
        live.kie.gate.set()
        done = await live.wait_final(job_id, timeout=90)
        assert done["status"] == "succeeded", done
        assert [a["outcome"] for a in done["attemptsDetail"]] == ["succeeded"]
        assert live.kie.calls["createTask"] == 1
        image = await live.http.get(done["bestOutputUrl"])
        assert image.status_code == 200
        [job] = (await live.http.get("/jobs", headers=live.auth)).json()["items"]
        assert job["id"] == job_id  # exactly one job


async def test_a_capture_sent_while_the_database_is_away_is_refused_cleanly_then_resumes_once(
    database_url: str, redis_url: Any, tmp_path: Path
) -> None:
    """What the console's "Resume upload" relies on: during an outage the booth answers a clear
    503 (not a 500, not a hang), and the same capture re-sent later makes exactly one job."""
    async with (
        open_cable(database_url) as cable,
        open_live(cable.via(database_url), redis_url, tmp_path / "data") as live,
    ):
        event = await live.event()
        session = await live.guest(event["id"])
        photo = jpeg(color=(9, 80, 200))
        cable.cut()
        with trio.fail_after(20):
            refused = await live.submit(session, photo, key="capture-7")
            health = await live.http.get("/health")
        assert refused.status_code == 503, refused.text
        assert set(refused.json()["error"]) == {"code", "message"}
        assert health.status_code == 503 and health.json()["status"] != "ok"
        cable.mend()
        with trio.fail_after(20):
            while True:  # the pool's connections come back one by one
                resent = await live.submit(session, photo, key="capture-7")
                if resent.status_code != 503:
                    break
                await trio.sleep(0.2)
        assert resent.status_code == 201, resent.text
        done = await live.wait_final(resent.json()["id"])
        assert done["status"] == "succeeded", done
        again = await live.submit(session, photo, key="capture-7")
        assert again.status_code == 200 and again.json()["id"] == done["id"]
        [job] = (await live.http.get("/jobs", headers=live.auth)).json()["items"]
        assert job["id"] == done["id"]
