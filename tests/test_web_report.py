"""The compliance report page and its downloads: compliance and admins only."""

import csv
import io
import json
import re

import pytest
import time_machine

from breakglass import roles

from . import report_data
from .conftest import make_user
from .flows import make_ssh_ca, make_ssh_target
from .report_data import NOW
from .web_helpers import login

URL = "/report/"
EXPORT_URL = "/report/export/"
MARCH = {"since": "2030-03-01", "until": "2030-03-03"}


@pytest.fixture
def erin(db):
    return make_user("erin", roles.REQUESTER, groups=["oncall"])


@pytest.fixture
def made(db, tmp_path, monkeypatch, alice, erin, bob, carol):
    make_ssh_ca(tmp_path, monkeypatch)
    make_ssh_target("bastion")
    make_ssh_target("jump")
    return report_data.build(alice, erin, bob, carol)


def _get(user, url, query=None):
    with time_machine.travel(NOW, tick=False):
        return login(user).get(url, query or {})


def csv_sections(text):
    """Return the CSV download's tables by name, as lists of dicts."""
    tables, lines = {}, list(csv.reader(io.StringIO(text)))
    blocks, block = [], []
    for line in lines + [[]]:
        if line:
            block.append(line)
        elif block:
            blocks.append(block)
            block = []
    for (name,), header, *rows in blocks:
        tables[name] = [dict(zip(header, row, strict=True)) for row in rows]
    return tables


def as_cell(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def test_the_report_is_for_compliance_and_admins_only(made, cora, ada, oscar):
    alice, bob = made["quick"].requester, made["denied"].approvals.get().approver
    for user in [cora, ada]:
        assert _get(user, URL).status_code == 200, user
        assert _get(user, EXPORT_URL, {"format": "csv"}).status_code == 200, user
    for user in [alice, bob, oscar]:
        for url in (URL, EXPORT_URL):
            response = _get(user, url, {**MARCH, "format": "csv"})
            assert response.status_code == 403, (user, url)
            assert "bastion" not in response.text
    assert login(cora).get("/").text.count(f'href="{URL}"') == 1
    assert f'href="{URL}"' not in login(alice).get("/").text


def test_the_report_needs_a_login(client, db):
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_the_page_defaults_to_the_last_30_days(made, cora):
    page = _get(cora, URL)

    assert page.status_code == 200
    assert 'name="since" value="2030-02-03"' in page.text
    assert 'name="until" value="2030-03-04"' in page.text
    assert "Requests made from 2030-02-03 to 2030-03-04" in page.text
    # The three days of grants and the requests of February 28 and March 4.
    assert "<dt>Requests</dt><dd>7</dd>" in page.text


def test_the_page_shows_every_figure(made, cora):
    page = _get(cora, URL, MARCH)

    text = page.text
    assert page.status_code == 200
    assert "<dt>Requests</dt><dd>5</dd>" in text
    assert "<dt>Grants issued</dt><dd>4</dd>" in text
    assert re.search(r"<td>bastion</td><td>3</td>.*<td>jump</td><td>1</td>", text)
    assert re.search(r"<td>alice</td><td>3</td>.*<td>erin</td><td>1</td>", text)
    assert 'status-expired">expired</span></td><td>2</td>' in text
    approval = text[text.index('<tr id="time_to_approval">') :]
    approval = approval[: approval.index("</tr>")]
    assert '<data value="105.0">1 min 45 s</data>' in approval
    assert approval.count('<data value="600.0">10 min 0 s</data>') == 2
    assert f'href="/requests/{made["slow"].pk}/">#{made["slow"].pk}</a>' in approval
    assert '<data value="7.5">7.5 s</data>' in text
    late = text[text.index('id="revoked-late"') :]
    for name in ("slow", "retried", "failing"):
        assert made[name].grant.principal in late
    assert "not yet" in late
    failed = text[text.index('id="failed-revocations"') :]
    assert made["failing"].grant.principal in failed
    assert "still failing" in failed
    assert "download>Download CSV</a>" in text
    assert (
        f'href="{EXPORT_URL}?since=2030-03-01&amp;until=2030-03-03&amp;format=json"'
        in text
    )


def test_the_chart_is_an_accessible_svg_with_a_table(made, cora):
    text = _get(cora, URL, MARCH).text

    svg = text[text.index("<svg") : text.index("</svg>")]
    assert 'role="img"' in svg
    assert 'aria-labelledby="chart-title chart-desc"' in svg
    assert "Grants issued per day, 2030-03-01 to 2030-03-03</title>" in svg
    assert "4 grants over 3 days; the most, 2, on 2030-03-01." in svg
    assert svg.count("<rect") == 3
    assert "<title>2030-03-01: 2 grants</title>" in svg
    assert "<title>2030-03-02: 1 grant</title>" in svg
    assert "<script" not in text.split("</head>")[1]
    table = text[text.index('id="grants-by-day"') :]
    assert "<tr><td>2030-03-01</td><td>2</td></tr>" in table


def test_the_downloads_are_the_report_of_the_page(made, cora, api):
    csv_response = _get(cora, EXPORT_URL, {**MARCH, "format": "csv"})
    json_response = _get(cora, EXPORT_URL, {**MARCH, "format": "json"})
    with time_machine.travel(NOW, tick=False):
        from_api = api(cora).get("/api/v1/reports/compliance/", MARCH).json()

    assert csv_response.status_code == json_response.status_code == 200
    assert csv_response["Content-Type"] == "text/csv; charset=utf-8"
    assert csv_response["Content-Disposition"] == (
        'attachment; filename="breakglass-report-2030-03-01-2030-03-03.csv"'
    )
    assert json_response["Content-Type"] == "application/json"
    assert json_response["Content-Disposition"] == (
        'attachment; filename="breakglass-report-2030-03-01-2030-03-03.json"'
    )
    figures = json.loads(json_response.content)
    assert figures == from_api
    assert figures["grants_issued"] == 4
    assert figures["time_to_approval"]["median_seconds"] == 105.0

    tables = csv_sections(csv_response.content.decode())
    assert tables["report"] == [
        {
            "since": "2030-03-01",
            "until": "2030-03-03",
            "generated_at": "2030-03-04T12:00:00Z",
            "late_after_seconds": "60",
            "requests_total": "5",
            "grants_issued": "4",
        }
    ]
    for name in (
        "requests_by_status",
        "grants_by_target",
        "grants_by_requester",
        "grants_by_day",
        "revoked_late",
        "failed_revocations",
    ):
        expected = [{k: as_cell(v) for k, v in row.items()} for row in figures[name]]
        assert tables[name] == expected, name
    assert {row["figure"]: row for row in tables["times"]}["time_to_issuance"] == {
        "figure": "time_to_issuance",
        **{k: as_cell(v) for k, v in figures["time_to_issuance"].items()},
    }
    assert len(tables["revoked_late"]) == 3


@pytest.mark.parametrize(
    "query, problem",
    [
        ({"since": "yesterday"}, "Enter a valid date."),
        ({"until": "2030-02-30"}, "Enter a valid date."),
        (
            {"since": "2030-03-03", "until": "2030-03-01"},
            "Must not be before the first day.",
        ),
        (
            {"since": "2030-01-01", "until": "2031-01-02"},
            "A report covers at most 366 days.",
        ),
        ({**MARCH, "target": "bastion"}, "Unknown field: target."),
    ],
)
def test_bad_filters_are_refused_with_400(made, cora, query, problem):
    for url, extra in ((URL, {}), (EXPORT_URL, {"format": "csv"})):
        response = _get(cora, url, {**query, **extra})

        assert response.status_code == 400, (url, query)
        assert problem in response.text
        assert 'role="alert"' in response.text
        assert "Download CSV" not in response.text
        assert "attachment" not in response.get("Content-Disposition", "")


def test_a_download_needs_a_known_format(made, cora):
    for query in ({**MARCH, "format": "xml"}, MARCH):
        response = _get(cora, EXPORT_URL, query)

        assert response.status_code == 400, query
        assert "format: " in response.text


def test_a_full_year_and_the_last_day_there_is_are_fine(made, cora):
    year = {"since": "2030-01-01", "until": "2031-01-01"}
    assert _get(cora, URL, year).status_code == 200
    last = {"since": "9999-12-31", "until": "9999-12-31"}
    assert _get(cora, URL, last).status_code == 200
    assert _get(cora, EXPORT_URL, {**last, "format": "json"}).status_code == 200
