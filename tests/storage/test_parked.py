"""An operator sees the rows the recorder parked: ``GET /admin/recorder/parked``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from starlette.testclient import TestClient

from relay.web.app import create_app


def test_the_admin_api_lists_parked_rows_with_their_errors(make_settings: Any) -> None:
    settings = make_settings(RELAY_ADMIN_TOKEN="s3cret", OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    token = {"Authorization": "Bearer s3cret"}
    with TestClient(create_app(settings)) as client:
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        db, recorder = runtime.deps.db, runtime.deps.recorder

        async def unwritable_turn() -> None:
            async with db.engine.begin() as conn:
                await conn.execute(
                    text(
                        "CREATE TRIGGER no_poison BEFORE INSERT ON turns WHEN NEW.content = "
                        "'poison' BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
                    )
                )
            for seq, content in enumerate(["Hello", "poison", "Bye"]):
                recorder.turn(call_sid="CA1", session_id="VX1", seq=seq, role="user",
                              content=content, created_at=recorder_now())  # fmt: skip
            assert await recorder.flush(timeout=10)

        client.portal.call(unwritable_turn)
        assert client.get("/admin/recorder/parked").status_code == 401
        answer = client.get("/admin/recorder/parked", headers=token).json()

    assert (answer["parked_total"], answer["lost_total"]) == (1, 0)
    [row] = answer["records"]
    assert (row["table"], row["call_sid"]) == ("turns", "CA1")
    assert '"content":"poison"' in row["record"] and "injected failure" in row["error"]


def recorder_now() -> Any:
    from relay.storage.recorder import utcnow

    return utcnow()
