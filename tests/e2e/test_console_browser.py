"""The auditor's console in a real browser (Debian's headless Chromium driven by Selenium): traffic
goes through Envoy, then the console shows it, a filter narrows it, a record shows "verified", a
tampered copy of the store shows "broken" at the right record, and an export downloads."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.support import REPO, free_ports, unique_marker, wait_port

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SHOTS = os.environ.get("LEDGERGATE_CONSOLE_SCREENSHOTS")  # a directory: save the main pages there

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    # `make test` installs both (the Makefile's browser target); in CI their absence is a failure.
    if os.environ.get("CI"):
        raise RuntimeError("chromium and chromium-driver are missing: `make test` should have installed them")
    pytest.skip("chromium and chromium-driver are not installed (make test installs them)",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def start_console(tmp: Path, audit_dir: Path, var_dir: Path, name: str,
                  policies: Path | None = None) -> tuple[subprocess.Popen, str, Path]:
    port = free_ports(1)[0]
    access_log = tmp / f"{name}-access.jsonl"
    log = open(tmp / f"{name}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "ext_proc.cli.main", "console", "--audit", str(audit_dir),
                             "--var-dir", str(var_dir), "--policies", str(policies or var_dir / "policy-store"),
                             "--listen", f"127.0.0.1:{port}", "--index", str(tmp / f"{name}-index.sqlite"),
                             "--access-log", str(access_log)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wait_port(port, 30)
    return proc, f"http://127.0.0.1:{port}", access_log


def browser(download_dir: Path) -> webdriver.Chrome:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tempfile.mkdtemp(prefix='lg-chromium-')}", "--window-size=1400,1700"):
        opts.add_argument(a)
    opts.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                           "download.prompt_for_download": False})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def sign_in(d, base: str, token: str) -> None:
    d.get(base + "/")
    assert "/login" in d.current_url  # nothing is shown without an auditor's token
    d.find_element(By.ID, "token").send_keys(token)
    d.find_element(By.ID, "signin").click()
    WebDriverWait(d, 10).until(EC.presence_of_element_located((By.ID, "chain")))


def shot(d, name: str) -> None:
    if SHOTS:
        time.sleep(0.3)
        d.save_screenshot(str(Path(SHOTS) / f"console-{name}.png"))


def chat(stack, token: str, text: str) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {token}"},
                      json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}, timeout=30)


@pytest.fixture(scope="module")
def traffic(stack):
    """Requests through Envoy by two fresh subjects: two plain, one with an e-mail address
    (redacted), and one from a role no rule permits (denied)."""
    dev, guest = unique_marker("dev"), unique_marker("guest")
    ids = {}
    for key, sub, roles, text in (("plain1", dev, "developer", "hello console"),
                                  ("plain2", dev, "developer", "hello again"),
                                  ("email", dev, "developer", "write to jane.doe@example.com today"),
                                  ("denied", guest, "guest", "hello from a guest")):
        r = chat(stack, stack.token(sub=sub, roles=roles), text)
        ids[key] = r.headers["x-request-id"]
        assert (r.status_code == 200) == (key != "denied"), r.text
    return {"dev": dev, "guest": guest, "ids": ids}


def candidate_without_pii_redaction(policy_store: Path) -> str:
    """A candidate policy: the default one without its redact-pii rule, put in `policy_store`."""
    from ext_proc.policy import PolicyStore, load_policy_text

    text = (REPO / "policies" / "default.yaml").read_text()
    start, end = text.index("  - id: redact-pii"), text.index("  - id: permit-developers")
    return PolicyStore(policy_store).put(load_policy_text(text[:start] + text[end:]))


def test_console_shows_filters_verifies_and_exports(stack, traffic, tmp_path):
    policies = tmp_path / "policy-store"
    shutil.copytree(stack.var_dir / "policy-store", policies)
    candidate = candidate_without_pii_redaction(policies)
    proc, base, access_log = start_console(tmp_path, stack.audit_dir, stack.var_dir, "live", policies)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    d = browser(downloads)
    try:
        sign_in(d, base, stack.token(sub="olivia-auditor", roles="auditor"))
        chain = d.find_element(By.ID, "chain").text
        assert "verified" in chain and "broken" not in chain
        shot(d, "overview")

        # Everything, then narrowed to one subject: exactly that subject's three requests.
        d.get(base + "/search")
        WebDriverWait(d, 10).until(EC.text_to_be_present_in_element((By.ID, "match-count"), "matching"))
        everything = int(d.find_element(By.ID, "match-count").text.split()[0])
        assert everything >= 4
        d.find_element(By.ID, "f-subject").send_keys(traffic["dev"])
        d.find_element(By.ID, "apply").click()
        WebDriverWait(d, 10).until(EC.text_to_be_present_in_element((By.ID, "match-count"), "3 matching"))
        assert f"subject={traffic['dev']}" in d.current_url  # the filter is in the URL (htmx push)
        shown = {tr.get_attribute("data-request-id") for tr in d.find_elements(By.CSS_SELECTOR, "tr.result")}
        assert shown == {traffic["ids"]["plain1"], traffic["ids"]["plain2"], traffic["ids"]["email"]}

        # A label filter narrows further, to the request with the e-mail address.
        d.get(base + f"/search?subject={traffic['dev']}&label=pii.email")
        rows = d.find_elements(By.CSS_SELECTOR, "tr.result")
        assert [r.get_attribute("data-request-id") for r in rows] == [traffic["ids"]["email"]]
        assert "redact" in rows[0].text
        shot(d, "search")

        # The denied guest's request: only a decision record, denied.
        d.get(base + f"/search?decision=deny&subject={traffic['guest']}")
        assert [r.get_attribute("data-request-id") for r in d.find_elements(By.CSS_SELECTOR, "tr.result")] \
            == [traffic["ids"]["denied"]]

        # One request: decision and outcome side by side, both verified, findings as labels.
        d.get(base + f"/search?subject={traffic['dev']}&label=pii.email")
        d.find_element(By.CSS_SELECTOR, "tr.result a").click()
        WebDriverWait(d, 10).until(EC.presence_of_element_located((By.ID, "decision")))
        states = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".record-state")]
        assert states == ["verified", "verified"]
        decision = d.find_element(By.ID, "decision").text
        assert "pii.email" in decision and "redact-pii" in decision and traffic["dev"] in decision
        assert "jane.doe" not in d.page_source  # labels and offsets, never the text
        shot(d, "request")

        # Export of the filtered set downloads as CSV with exactly those rows.
        d.get(base + f"/search?subject={traffic['dev']}")
        d.find_element(By.ID, "export-csv").click()
        deadline = time.time() + 15
        files = []
        while time.time() < deadline:
            files = [f for f in downloads.glob("*.csv")]
            if files and not list(downloads.glob("*.crdownload")):
                break
            time.sleep(0.2)
        assert files, "the CSV export did not download"
        exported = list(csv.DictReader(files[0].open()))
        assert {r["request_id"] for r in exported} == shown
        assert {r["subject"] for r in exported} == {traffic["dev"]}

        d.get(base + "/charts?by=label")
        assert d.find_element(By.CSS_SELECTOR, "#timechart svg")
        shot(d, "charts")
        d.get(base + "/policies")
        versions = d.find_element(By.ID, "versions").text
        assert "not in the store" not in versions or "No decision" in versions
        shot(d, "policies")

        # What-if: the candidate without the PII rule would have permitted the redacted request.
        d.get(base + f"/policies/whatif?candidate={candidate}&subject={traffic['dev']}")
        changes = {tr.get_attribute("data-request-id"): tr.text
                   for tr in d.find_elements(By.CSS_SELECTOR, "#whatif-changes tr[data-request-id]")}
        assert list(changes) == [traffic["ids"]["email"]]
        assert "redact" in changes[traffic["ids"]["email"]] and "permit" in changes[traffic["ids"]["email"]]
        assert "replayed\n3" in d.find_element(By.ID, "whatif-summary").text
        shot(d, "whatif")
    finally:
        d.quit()
        proc.terminate()
        proc.wait(10)
    # Every view was recorded with who looked; the token itself never.
    entries = [json.loads(line) for line in access_log.read_text().splitlines()]
    assert any(e["path"] == f"/request/{traffic['ids']['email']}" and e["subject"] == "olivia-auditor"
               for e in entries)
    assert any(e["path"] == "/export.csv" and e["query"].get("subject") == traffic["dev"] for e in entries)
    assert "eyJ" not in access_log.read_text()


def test_console_shows_a_tampered_copy_broken_at_the_right_record(stack, traffic, tmp_path):
    copy = tmp_path / "audit-copy"
    copy.mkdir()
    target = traffic["ids"]["plain2"]
    where = None
    for f in sorted(stack.audit_dir.glob("*.jsonl")):
        data = f.read_bytes()
        data = data[: data.rfind(b"\n") + 1]  # a consistent copy: complete lines only
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            if line and json.loads(line).get("request_id") == target and json.loads(line)["kind"] == "decision":
                # The kind of edit someone hiding a decision would make: the outcome changed.
                lines[i] = line.replace(b'"outcome":"permit"', b'"outcome":"deny"', 1)
                assert lines[i] != line
                where = (f.name, i + 1)
        (copy / f.name).write_bytes(b"\n".join(lines))
    assert where is not None
    proc, base, _log = start_console(tmp_path, copy, stack.var_dir, "tampered")
    d = browser(tmp_path)
    try:
        sign_in(d, base, stack.token(sub="olivia-auditor", roles="auditor"))
        row = d.find_element(By.CSS_SELECTOR, f'#chain tr[data-segment="{where[0]}"]').text
        assert "broken" in row and f"at record {where[1]}:" in row
        shot(d, "overview-broken")
        d.get(base + f"/request/{target}")
        decision = d.find_element(By.ID, "decision")
        assert decision.find_element(By.CSS_SELECTOR, ".record-state").text == "broken"
        assert "the chain breaks at this record" in decision.text
        # A request committed before the edit still verifies.
        d.get(base + f"/request/{traffic['ids']['plain1']}")
        assert d.find_element(By.CSS_SELECTOR, "#decision .record-state").text == "verified"
    finally:
        d.quit()
        proc.terminate()
        proc.wait(10)


def test_console_refuses_a_token_without_the_auditor_role(stack, tmp_path):
    proc, base, access_log = start_console(tmp_path, stack.audit_dir, stack.var_dir, "refuse")
    d = browser(tmp_path)
    try:
        d.get(base + "/login")
        d.find_element(By.ID, "token").send_keys(stack.token(sub="mallory", roles="developer"))
        d.find_element(By.ID, "signin").click()
        error = WebDriverWait(d, 10).until(EC.presence_of_element_located((By.ID, "login-error")))
        assert "auditor" in error.text
        d.get(base + "/search")
        assert "/login" in d.current_url
    finally:
        d.quit()
        proc.terminate()
        proc.wait(10)
    assert all(e["status"] in (401, 303) for e in map(json.loads, access_log.read_text().splitlines()))


def test_ledgergate_up_starts_the_console_and_prints_its_url_and_a_dev_auditor_token(tmp_path):
    """What `make run` prints: the console's URL and a token that signs an auditor in."""
    from tests.support import start_stack

    port = free_ports(1)[0]
    s = start_stack(tmp_path, "--console-port", str(port))
    try:
        deadline = time.time() + 30
        while b"Auditor's console" not in s.log_path.read_bytes() and time.time() < deadline:
            time.sleep(0.1)
        lines = s.log_path.read_text().splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith("Auditor's console:"))
        assert f"http://127.0.0.1:{port}/" in lines[at]
        token = lines[at + 1].strip()
        r = chat(s, s.token(sub="up-check"), "hello from make run")
        assert r.status_code == 200
        for _ in range(50):  # the console indexes new records on its next look (at most every 0.5 s)
            page = httpx.get(f"http://127.0.0.1:{port}/search?subject=up-check",
                             headers={"authorization": f"Bearer {token}"}, timeout=30)
            assert page.status_code == 200
            if r.headers["x-request-id"] in page.text:
                break
            time.sleep(0.2)
        assert r.headers["x-request-id"] in page.text
        assert httpx.get(f"http://127.0.0.1:{port}/search", timeout=30).status_code == 401
    finally:
        s.stop()
    assert (s.var_dir / "console" / "access.jsonl").read_text().count("dev-auditor") >= 1
