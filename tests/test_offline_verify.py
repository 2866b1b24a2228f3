"""The offline verifier: the same hash as the server, and every kind of damage named."""

import csv
import json
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from breakglass import audit, offline
from breakglass.models import AuditEvent

from .flows import make_ssh_ca, make_ssh_target, open_request

OFFLINE = Path(offline.__file__)

AWKWARD_DATA = {
    "unicode": "Zoë → 東京 \u2028 \U0001f6a8",
    "nested": {"b": [1, {"z": None, "a": [True, False]}], "a": {"x": "y"}},
    "float": 0.1 + 0.2,
    "small": 1.5e-7,
    "big": 2**70,
    "negative": -12345678901234567890,
    "empty": {},
    "quote": 'say "hi", then\nleave',
}


@pytest.fixture
def trail(db, tmp_path, monkeypatch, alice):
    """Eight events: requests, and events whose data is awkward to serialise."""
    make_ssh_ca(tmp_path, monkeypatch)
    make_ssh_target()
    open_request(alice, incident="INC-1")
    audit.record_event("test.awkward", actor="cora", data=AWKWARD_DATA)
    open_request(alice, incident="INC-2")
    audit.record_event("test.awkward", actor="ada", data={"list": [3, 2, 1]})
    open_request(alice, incident="INC-1")
    audit.record_event("test.awkward", actor="cora", data={"ünïcode": "ß"})
    open_request(alice, incident="INC-3")
    audit.record_event("test.awkward", actor="cora", data=[1, "two", 3.0])
    return list(AuditEvent.objects.order_by("seq"))


def _row(event):
    return {
        "seq": event.seq,
        "at": event.at.isoformat(timespec="microseconds"),
        "actor": event.actor,
        "action": event.action,
        "request": event.request_id,
        "incident": event.incident,
        "target": event.target,
        "scope": event.scope,
        "requester": event.requester,
        "data": event.data,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def write_json(path, events, trail_filter=None):
    document = {
        "exported_at": "2030-01-01T00:00:00.000000+00:00",
        "filter": trail_filter or {},
        "events": [_row(event) if hasattr(event, "seq") else event for event in events],
    }
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return path


def write_csv(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(offline.FIELDS)
        for row in rows:
            writer.writerow(
                [
                    json.dumps(row["data"], ensure_ascii=False)
                    if name == "data"
                    else ("" if row[name] is None else row[name])
                    for name in offline.FIELDS
                ]
            )
    return path


def run_script(*args, cwd=None):
    """Run the verifier as an auditor would: the file on its own, no Django."""
    return subprocess.run(
        [sys.executable, "-I", str(OFFLINE), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )


def test_offline_hash_agrees_with_the_server_on_real_events(trail):
    assert any(event.data == AWKWARD_DATA for event in trail)
    for event in trail:
        row = _row(event)
        assert offline.canonical_content(row) == audit.canonical_content(event)
        assert offline.compute_hash(row) == event.hash
        # The same after a trip through a JSON file and through a CSV cell.
        from_json = json.loads(json.dumps(row, ensure_ascii=False))
        assert offline.compute_hash(from_json) == event.hash
        from_cell = dict(row, data=json.loads(json.dumps(row["data"])))
        assert offline.compute_hash(from_cell) == event.hash


def test_the_script_runs_alone_and_finds_an_intact_trail(trail, tmp_path):
    rows = [_row(event) for event in trail]
    alone = tmp_path / "auditor"
    alone.mkdir()
    script = alone / "offline.py"
    script.write_text(OFFLINE.read_text())

    for path in (
        write_json(tmp_path / "trail.json", trail),
        write_csv(tmp_path / "trail.csv", rows),
    ):
        done = subprocess.run(
            [sys.executable, "-I", str(script), str(path)],
            capture_output=True,
            text=True,
            cwd=alone,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert f"intact: {len(trail)} events checked" in done.stdout
        assert f"seq 1 to {len(trail)}, last hash {trail[-1].hash}" in done.stdout


def test_the_module_runs_with_python_dash_m(trail, tmp_path):
    path = write_json(tmp_path / "trail.json", trail)
    done = subprocess.run(
        [sys.executable, "-m", "breakglass.offline", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"{len(trail)} events checked" in done.stdout


def _damaged(rows, how):
    rows = [dict(row) for row in rows]
    if how == "edited":
        rows[3]["actor"] = "mallory"
        return rows, 4, "was altered"
    if how == "edited data":
        rows[1]["data"] = dict(rows[1]["data"], big=2**70 + 1)
        return rows, 2, "was altered"
    if how == "rehashed":
        # Edited and hashed again: the next event no longer links to it.
        rows[3]["actor"] = "mallory"
        rows[3]["hash"] = offline.compute_hash(rows[3])
        return rows, 5, "does not link to seq 4"
    if how == "deleted":
        del rows[4]
        return rows, 5, "is missing: the export jumps from seq 4 to 6"
    if how == "first deleted":
        del rows[0]
        return rows, 1, "is missing: the export starts at seq 2"
    if how == "swapped":
        rows[2], rows[3] = rows[3], rows[2]
        return rows, 3, "comes after seq 4: rows are out of order"
    if how == "duplicated":
        rows.insert(3, dict(rows[2]))
        return rows, 3, "appears twice"
    raise AssertionError(how)


DAMAGE = [
    "edited",
    "edited data",
    "rehashed",
    "deleted",
    "first deleted",
    "swapped",
    "duplicated",
]


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("kind", ["csv", "json"])
def test_damage_is_named_at_the_first_bad_seq(trail, tmp_path, how, kind):
    rows, first_bad, reason = _damaged([_row(e) for e in trail], how)
    if kind == "csv":
        path = write_csv(tmp_path / "trail.csv", rows)
    else:
        path = write_json(tmp_path / "trail.json", rows)

    done = run_script(path)

    assert done.returncode == 1, done.stdout
    assert f"seq {first_bad} {reason}" in done.stderr
    assert done.stdout == ""


def test_a_filtered_export_checks_hashes_and_links_but_allows_gaps(trail, tmp_path):
    inc1 = [e for e in trail if e.incident == "INC-1"]
    some = [e for e in trail if e.seq in (2, 3, 4, 7)]
    path = write_json(tmp_path / "inc1.json", inc1, {"incident": "INC-1"})

    done = run_script(path)
    assert done.returncode == 0, done.stderr
    assert "2 events checked" in done.stdout
    assert "filtered, 1 breaks not linked" in done.stdout

    # A CSV export does not state its filter: it is told.
    path = write_csv(tmp_path / "some.csv", [_row(e) for e in some])
    assert run_script(path).returncode == 1
    done = run_script("--filtered", path)
    assert done.returncode == 0, done.stderr
    assert "4 events checked" in done.stdout
    assert "filtered, 1 breaks not linked" in done.stdout

    # Consecutive events of a filtered export must still link.
    rows = [_row(e) for e in some]
    rows[1]["prev_hash"] = "f" * 64
    rows[1]["hash"] = offline.compute_hash(rows[1])
    done = run_script("--filtered", write_csv(tmp_path / "bad.csv", rows))
    assert done.returncode == 1
    assert "seq 3 does not link to seq 2" in done.stderr

    # And every event's own hash is checked.
    rows = [_row(e) for e in some]
    rows[3]["data"] = {"list": [1, 2, 3]}
    done = run_script("--filtered", write_csv(tmp_path / "bad.csv", rows))
    assert done.returncode == 1
    assert "seq 7 was altered" in done.stderr


def test_a_whole_trail_must_start_from_the_genesis_hash(tmp_path):
    row = {
        "seq": 1,
        "at": "2030-01-01T00:00:00.000000+00:00",
        "actor": "alice",
        "action": "request.created",
        "request": 1,
        "incident": "INC-1",
        "target": "bastion",
        "scope": "read",
        "requester": "alice",
        "data": {},
        "prev_hash": "a" * 64,
    }
    row["hash"] = offline.compute_hash(row)
    done = run_script(write_json(tmp_path / "trail.json", [row]))

    assert done.returncode == 1
    assert "seq 1 does not start from the genesis hash" in done.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "no column"),
        ("not,a,trail\n1,2,3\n", "no column seq"),
        ("{", "is not a JSON document"),
        ('{"filter": {}}', 'no "events" list'),
        ('{"events": []}', 'no "filter" object'),
    ],
)
def test_a_file_that_is_no_export_is_refused(tmp_path, content, message):
    path = tmp_path / "export"
    path.write_text(content)

    done = run_script(path)

    assert done.returncode == 2
    assert message in done.stderr


def test_a_malformed_row_is_named(trail, tmp_path):
    path = write_csv(tmp_path / "trail.csv", [_row(e) for e in trail])
    with open(path, encoding="utf-8", newline="") as file:
        cells = list(csv.DictReader(file))
    cells[2]["data"] = "{oops"
    with open(path, "w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, offline.FIELDS)
        writer.writeheader()
        writer.writerows(cells)
    done = run_script(path)
    assert done.returncode == 1
    assert "seq 3 has data that is not JSON (line 4)" in done.stderr

    events = [_row(e) for e in trail]
    events[2] = "not an event"
    done = run_script(write_json(tmp_path / "trail.json", events))
    assert done.returncode == 1
    assert "event 3 of the events list" in done.stderr


def test_an_empty_export_is_intact(tmp_path):
    done = run_script(write_json(tmp_path / "trail.json", []))
    assert done.returncode == 0
    assert "holds no events" in done.stdout


def test_verify_audit_checks_an_export_file(trail, tmp_path):
    path = write_json(tmp_path / "trail.json", trail)
    out = StringIO()
    call_command("verify_audit", "--file", str(path), stdout=out)
    assert f"intact: {len(trail)} events checked" in out.getvalue()

    rows, _, _ = _damaged([_row(e) for e in trail], "swapped")
    path = write_csv(tmp_path / "swapped.csv", rows)
    err = StringIO()
    with pytest.raises(SystemExit) as exit_:
        call_command("verify_audit", "--file", str(path), stderr=err)
    assert exit_.value.code == 1
    assert "seq 3 comes after seq 4" in err.getvalue()

    some = [_row(e) for e in trail if e.seq in (1, 2, 5)]
    path = write_csv(tmp_path / "some.csv", some)
    out = StringIO()
    call_command("verify_audit", "--file", str(path), "--filtered", stdout=out)
    assert "3 events checked" in out.getvalue()


def test_verify_audit_without_file_still_checks_the_database(trail):
    out = StringIO()
    call_command("verify_audit", stdout=out)
    assert out.getvalue() == f"audit trail intact: {len(trail)} events checked\n"
