"""The issuer credentials (Google, GitLab, npm, PyPI, Hugging Face, SendGrid, Shopify, Databricks,
DigitalOcean, Mailgun, Atlassian, Twilio, Azure) and the credential-file lines (.netrc, .pgpass) on
the response side: the streaming gate reads with the same classifier, so a model that writes one
back, split across events and chunks at random, must not get any part of it to the client; and a
value longer than its rule's bound is removed whole (classify/extent.py), never its tail.
"""

from __future__ import annotations

import json
import random

import pytest

from ext_proc.classify.extent import whole_secrets
from tests.unit.test_response_leaks import CLF, assert_not_intact, build, longest_part, released, sdk_view

HEX = "0123456789abcdef"
ALNUM = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def _r(rnd: random.Random, alphabet: str, n: int) -> str:
    return "".join(rnd.choice(alphabet) for _ in range(n))


# label -> (text the model writes, the secret value in it)
def samples(rnd: random.Random) -> dict[str, tuple[str, str]]:
    google = "AIza" + _r(rnd, ALNUM + "_-", 35)
    gitlab = "glpat-" + _r(rnd, ALNUM, 20)
    npm = "npm_" + _r(rnd, ALNUM, 36)
    pypi = "pypi-AgEIcHlwaS5vcmc" + _r(rnd, ALNUM + "_-", 150)
    hf = "hf_" + _r(rnd, "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ", 34)
    sendgrid = "SG." + _r(rnd, ALNUM, 22) + "." + _r(rnd, ALNUM, 43)
    shopify = "shpat_" + _r(rnd, HEX, 32)
    databricks = "dapi" + _r(rnd, HEX, 32)
    do = "dop_v1_" + _r(rnd, HEX, 64)
    mailgun = "key-" + _r(rnd, HEX, 32)
    atlassian = "ATATT3" + _r(rnd, ALNUM + "_-", 180)
    twilio = _r(rnd, HEX, 32)
    azure = _r(rnd, ALNUM + "+/", 86) + "=="
    sas = _r(rnd, ALNUM, 12) + "%2B" + _r(rnd, ALNUM, 28) + "%3D"
    netrc = _r(rnd, ALNUM + "!#%", 18)
    pgpass = _r(rnd, ALNUM + "!#%", 18)
    return {
        "secret.google_api_key": (f"Set apiKey: '{google}' in firebase.js", google),
        "secret.gitlab_token": (f"Run glab auth login --token {gitlab} first.", gitlab),
        "secret.npm_token": (f"Put //registry.npmjs.org/:_authToken={npm} in .npmrc", npm),
        "secret.pypi_token": (f"twine upload -u __token__ -p {pypi} dist/*", pypi),
        "secret.huggingface_token": (f"huggingface-cli login --token {hf}", hf),
        "secret.sendgrid_key": (f"sg = SendGridAPIClient('{sendgrid}')", sendgrid),
        "secret.shopify_token": (f"X-Shopify-Access-Token: {shopify}", shopify),
        "secret.databricks_token": (f"databricks configure, token {databricks}", databricks),
        "secret.digitalocean_token": (f"doctl auth init -t {do}", do),
        "secret.mailgun_key": (f"curl --user 'api:{mailgun}' https://api.mailgun.net/v3", mailgun),
        "secret.atlassian_token": (f"JIRA token {atlassian} works", atlassian),
        "secret.twilio_key": (f"Your twilio auth token is {twilio}.", twilio),
        "secret.azure_key": (f"DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={azure};EndpointSuffix=core.windows.net",
                             azure),
        "secret.azure_key/sas": (f"GET https://acme.blob.core.windows.net/c/b?sv=2022-11-02&sp=r&sig={sas}&se=2026", sas),
        "secret.generic/netrc": (f"machine api.example.com\n  login ci\n  password {netrc}\n", netrc),
        "secret.generic/pgpass": (f"Your ~/.pgpass:\ndb.internal:5432:app:app_user:{pgpass}\nchmod 600 it.", pgpass),
    }


KINDS = sorted(samples(random.Random(0)))
FRAMINGS = ["chat.content", "chat.arguments", "anthropic.text", "anthropic.partial_json", "gemini.sse",
            "responses.output_text", "converse.text", "whole.content"]


@pytest.mark.parametrize("kind", KINDS)
def test_an_issuer_credential_in_a_prompt_is_found_whole(kind):
    rnd = random.Random(kind)
    text, value = samples(rnd)[kind]
    found = [f for f in CLF.scan(text) if f.label == kind.split("/")[0]]
    assert found, text
    start = text.index(value)
    assert any(f.start <= start and start + len(value) <= f.end for f in found), (text, found)


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("kind", KINDS)
def test_an_issuer_credential_written_back_never_reaches_the_sdk(framing, kind):
    rnd = random.Random(f"{framing}/{kind}")
    for _ in range(3):
        text, value = samples(rnd)[kind]
        surface, ctype, body = build(framing, text, rnd)
        out, ins = released(surface, ctype, body, rnd)
        assert_not_intact(value, sdk_view(out))
        assert kind.split("/")[0] in ins.outcome()["classification"], ins.outcome()


# Values past their rule's bound: the finding stops at the bound, the extent takes the rest.
LONG = {
    "secret.pypi_token": lambda rnd: "pypi-AgEIcHlwaS5vcmc" + _r(rnd, ALNUM + "_-", 900),
    "secret.atlassian_token": lambda rnd: "ATATT3" + _r(rnd, ALNUM + "_-", 700),
    "secret.gitlab_token": lambda rnd: "glpat-" + _r(rnd, ALNUM + "_-", 300),
    "secret.azure_key": lambda rnd: "AccountKey=" + _r(rnd, ALNUM + "+/", 400) + "==",
}


@pytest.mark.parametrize("label", sorted(LONG))
def test_a_value_longer_than_its_rule_is_removed_whole_from_a_request(label):
    rnd = random.Random(label)
    value = LONG[label](rnd)
    text = "here: " + value + " thanks"
    found = [f for f in CLF.scan(text) if f.label == label]
    assert found
    whole = whole_secrets(text, found, limit=10_000)
    start = text.index(value) + (len("AccountKey=") if label == "secret.azure_key" else 0)
    assert any(f.start <= start and text.index(" thanks") <= f.end for f in whole), whole


@pytest.mark.parametrize("prefix", [True, False], ids=["prefix-hold", "fixed-hold"])
@pytest.mark.parametrize("label", sorted(LONG))
def test_a_value_longer_than_its_rule_is_masked_whole_by_the_gate(label, prefix):
    from ext_proc.streaming.gate import Ledger, TextGate
    from tests.unit.test_gate_promises import pieces, policy, stream
    rnd = random.Random(f"{label}/{prefix}")
    for case in range(3):
        value = LONG[label](rnd)
        text = "Use it like this: " + value + " and keep it safe."
        parts = pieces(text, rnd, 1 if case == 0 else rnd.choice([7, 40, 400]))
        _after, out = stream(TextGate(policy(prefix=prefix), Ledger(), "t"), parts)
        assert longest_part(value, [out]) < 12, (case, out[:300])
        assert f"[{label.upper()}]" in out


# Found already before the issuer rules (kept here as guards): a GCP service-account key file's
# private_key, with its line breaks as JSON "\n" escapes, in a prompt and in a JSON document inside
# a prompt string; and the secret access key of an `export AWS_SECRET_ACCESS_KEY=` line.
def _sa_json(rnd: random.Random) -> tuple[str, str]:
    body = "\n".join(_r(rnd, ALNUM + "+/", 64) for _ in range(20))
    key = "-----BEGIN PRIVATE KEY-----\n" + body + "\n-----END PRIVATE KEY-----\n"
    doc = json.dumps({"type": "service_account", "project_id": "acme-prod", "private_key_id": _r(rnd, HEX, 40),
                      "private_key": key, "client_email": "etl@acme-prod.iam.gserviceaccount.com"})
    return doc, json.dumps(key)[1:-1].rstrip("\\n")


@pytest.mark.parametrize("nesting", [0, 1, 2])
def test_a_service_account_key_file_in_a_prompt_is_found_whole(nesting):
    rnd = random.Random(nesting)
    doc, escaped_key = _sa_json(rnd)
    for _ in range(nesting):                         # a JSON document inside a string, inside one...
        doc, escaped_key = json.dumps(doc), json.dumps(escaped_key)[1:-1]
    text = "Why does this fail? " + doc + " thanks"
    start = text.index(escaped_key)
    found = [f for f in CLF.scan(text) if f.label == "secret.private_key"]
    assert any(f.start <= start and start + len(escaped_key) <= f.end for f in found), found


def test_an_exported_aws_secret_access_key_is_found():
    value = "q3Xv9Lk2Fh7Tz0Rb8Wn4Ys1Pd6Gm5Jc3Ue2Ai9Ko7"
    text = f"export AWS_ACCESS_KEY_ID=AKIA2E0A8F3B244C9986\nexport AWS_SECRET_ACCESS_KEY={value}\n"
    start = text.index(value)
    assert any(f.label == "secret.generic" and f.start <= start and start + len(value) <= f.end
               for f in CLF.scan(text))


def test_every_line_of_a_pgpass_file_is_found_and_a_colon_run_in_prose_is_not():
    pws = ["Xk9Lm2Fh7Tz0Rb8Wn4", "Pq8\\:rs7Tu6vW", "Ab3dE5fG7h", "Zz9yX8wV7u"]
    text = (f"~/.pgpass:\ndb.internal:5432:app:app_user:{pws[0]}\nlocalhost:*:*:postgres:{pws[1]}\n"
            f"    *:*:*:etl:{pws[2]}  \r\n10.0.0.5:6432:*:*:{pws[3]}")
    found = {text[f.start:f.end] for f in CLF.scan(text) if f.label == "secret.generic"}
    assert found == set(pws)
    for prose in ("db.internal:5432:app:app_user:Xk9Lm2Fh7Tz0Rb8Wn4 is what I typed", "12:30:45:00:17Z",
                  "16:9:4:3:2024q", "fe80:1:2:3:4:5:6:7"):
        assert not [f for f in CLF.scan(prose) if f.label == "secret.generic"], prose


def test_a_list_of_md5_sums_costs_no_twilio_candidates(monkeypatch):
    """A bare 32-hex value is a Twilio auth token only after Twilio context; the context is in the
    pattern, so a pasted checksum file (each line a near-miss) does not eat the request's candidate
    budget (10,000: past it the request is refused): the Twilio rules add no candidate to it."""
    import ext_proc.classify.engine as engine
    from ext_proc.classify import rules
    from ext_proc.pipeline.budget import BudgetedClassifier
    rnd = random.Random(5)
    text = "".join(f"{_r(rnd, HEX, 32)}  dist/pkg-{i}.tar.gz\n" for i in range(3000))
    with_twilio = BudgetedClassifier(CLF)
    assert not [f for f in with_twilio.scan(text) if f.label == "secret.twilio_key"]
    monkeypatch.setattr(engine, "builtin_rules",
                        lambda: tuple(r for r in rules.builtin_rules() if r.label != "secret.twilio_key"))
    without = BudgetedClassifier(engine.Classifier())
    without.scan(text)
    assert with_twilio.to_record()["candidates"] == without.to_record()["candidates"]
