"""A labelled corpus for the classifier, generated deterministically (Faker + a seeded Random).

Each sample is a text and the spans (label, start, end) a careful human would mark. Positives
sit in realistic sentences, code and config; hard negatives are near misses (Luhn-failing cards,
invalid or published SSNs, dates without birth context, versions, MACs, UUIDs, hashes, base64
blobs, placeholders, code that mentions passwords without holding one) and multilingual text.

    python -m tests.classify_corpus.generate [OUT.jsonl]     # dump it for inspection
"""

from __future__ import annotations

import base64
import json
import random
import string
import sys
from dataclasses import dataclass, field

from faker import Faker

SEED = 20240611
ALNUM = string.ascii_letters + string.digits
B32 = string.ascii_uppercase + "234567"


@dataclass
class Sample:
    text: str = ""
    spans: list[tuple[str, int, int]] = field(default_factory=list)
    kind: str = "positive"

    def add(self, s: str) -> Sample:
        self.text += s
        return self

    def value(self, label: str, v: str) -> Sample:
        self.spans.append((label, len(self.text), len(self.text) + len(v)))
        self.text += v
        return self


def _luhn_digit(partial: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def make_npi(rng: random.Random) -> str:
    body = rng.choice("12") + "".join(rng.choice(string.digits) for _ in range(8))
    return body + _luhn_digit("80840" + body)


def group4(s: str, sep: str = " ") -> str:
    return sep.join(s[i:i + 4] for i in range(0, len(s), 4))


def fmt_card(rng: random.Random, number: str) -> str:
    style = rng.random()
    if style < 0.4:
        return number
    sep = " " if style < 0.75 else "-"
    if len(number) == 15:                      # Amex 4-6-5
        return sep.join((number[:4], number[4:10], number[10:]))
    return group4(number, sep)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def make_jwt(rng: random.Random, fake: Faker) -> str:
    head = b64url(json.dumps({"alg": rng.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}).encode())
    body = b64url(json.dumps({"sub": fake.uuid4(), "name": fake.name(), "iat": rng.randint(1_600_000_000, 1_800_000_000)}).encode())
    sig = b64url(rng.randbytes(rng.choice([32, 64, 256])))
    return f"{head}.{body}.{sig}"


def rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def make_private_key(rng: random.Random) -> str:
    kind = rng.choice(["RSA ", "EC ", "", "OPENSSH "])
    body = base64.b64encode(rng.randbytes(rng.choice([48, 121, 300, 1190]))).decode()
    lines = "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{lines}\n-----END {kind}PRIVATE KEY-----"


CARD_TYPES = ["visa16", "visa13", "visa19", "mastercard", "amex", "discover", "diners", "jcb16"]


def positives(rng: random.Random, fake: Faker, fakes: dict[str, Faker]) -> list[Sample]:
    out: list[Sample] = []
    P = lambda: Sample()  # noqa: E731

    for _ in range(60):
        e = rng.choice([fake.email(), fake.free_email(), fake.company_email(),
                        f"{fake.first_name().lower()}.{fake.last_name().lower()}+{rng.randint(1, 99)}@{fake.domain_name()}"])
        t = rng.choice(["Please email {} about the invoice.", "From: {}\nSubject: hello",
                        "<a href=\"mailto:{}\">write</a>", "contact={};", "Reply to {}, thanks"])
        a, b = t.split("{}")
        out.append(P().add(a).value("pii.email", e).add(b))

    for _ in range(60):
        ph = rng.choice([fake.phone_number(), fake.phone_number(), rng.choice(
            ["+44 20 7946 0958", "+49 30 901820", "+33 1 42 68 53 00", "+81 3-1234-5678",
             "+34 884 39 15 00", "+61 2 9374 4000", "+49(0)3915 00080", "+39 0125080630"])])
        t = rng.choice(["Call me at {} tomorrow.", "Phone: {}", "You can reach the office on {}.",
                        "Mobile {} (after 6pm)", "Tel.: {}\nFax: none", "text me: {}"])
        a, b = t.split("{}")
        out.append(P().add(a).value("pii.phone", ph).add(b))

    for _ in range(60):
        ssn = fake.ssn()
        t = rng.choice(["SSN: {}", "Employee social security number {} on file.",
                        "{name} (SSN {}) requested a W-2.", "ssn={}&dob=", "Tax id for payroll: {}"])
        a, b = t.replace("{name}", fake.name()).split("{}")
        out.append(P().add(a).value("pii.us_ssn", ssn).add(b))

    for _ in range(60):
        ip = rng.choice([fake.ipv4(), fake.ipv4_private(), fake.ipv4_public(), fake.ipv6(),
                         "fe80::1ff:fe23:4567:890a", "2001:db8:85a3::8a2e:370:7334"])
        t = rng.choice(["Request from {} was blocked.", "ssh admin@ failed from {}",
                        "client_ip: {}\n", "Connecting to {} port 443", "X-Forwarded-For: {}"])
        a, b = t.split("{}")
        out.append(P().add(a).value("pii.ip_address", ip).add(b))

    for _ in range(60):
        loc = rng.choice(["en_GB", "de_DE", "fr_FR", "es_ES", "nl_NL", "it_IT", "pl_PL", "pt_PT"])
        iban = fakes[loc].iban()
        if rng.random() < 0.5:
            iban = group4(iban)
        t = rng.choice(["IBAN: {}", "Bitte überweisen Sie den Betrag auf {} bis Freitag.",
                        "Virement sur le compte {}, merci.", "Account {} (EUR)"])
        a, b = t.split("{}")
        out.append(P().add(a).value("pii.iban", iban).add(b))

    for _ in range(60):
        d = fake.date_of_birth(minimum_age=1, maximum_age=100)
        fmt, t = rng.choice([
            ("%Y-%m-%d", "Date of birth: {}"), ("%m/%d/%Y", "Patient DOB {} verified."),
            ("%d.%m.%Y", "geboren am {} in Berlin"), ("%d/%m/%Y", "née le {} à Lyon"),
            ("%B %d, %Y", "She was born on {}."), ("%d %B %Y", "Birthdate {} (per passport)"),
            ("%Y年%m月%d日", "生年月日：{}")])
        a, b = t.split("{}")
        out.append(P().add(a).value("pii.date_of_birth", d.strftime(fmt)).add(b))

    for _ in range(80):
        num = fake.credit_card_number(rng.choice(CARD_TYPES))
        t = rng.choice(["Card number: {}", "Charge {} exp 04/27", "cc={}&cvv=123",
                        "Pay with my Visa {} please", "The number is {}, expiry next year."])
        a, b = t.split("{}")
        out.append(P().add(a).value("pci.card_number", fmt_card(rng, num)).add(b))

    for _ in range(50):
        t = rng.choice(["NPI: {}", "Referring provider {} (cardiology)", "Dr. {name}, NPI {}",
                        "prescriber_npi={}"])
        a, b = t.replace("{name}", fake.last_name()).split("{}")
        out.append(P().add(a).value("phi.us_npi", make_npi(rng)).add(b))

    for _ in range(50):
        v = rng.choice([rand(rng, string.digits, rng.randint(6, 10)),
                        "H" + rand(rng, string.digits, 7), f"{rand(rng, string.digits, 3)}-{rand(rng, string.digits, 4)}"])
        t = rng.choice(["MRN: {}", "Medical record number {} admitted 3/4.", "Patient ID: {}",
                        "mrn #{} discharge summary"])
        a, b = t.split("{}")
        out.append(P().add(a).value("phi.mrn", v).add(b))

    secrets = [
        ("secret.aws_access_key", lambda: "AKIA" + rand(rng, B32, 16),
         ["aws_access_key_id = {}", "AWS key {} leaked", "\"AccessKeyId\": \"{}\""]),
        ("secret.github_token", lambda: rng.choice(["ghp_", "gho_", "ghs_"]) + rand(rng, ALNUM, 36),
         ["GITHUB_TOKEN={}", "git clone https://{}@github.com/acme/x", "token: {}"]),
        ("secret.github_token", lambda: "github_pat_" + rand(rng, ALNUM, 22) + "_" + rand(rng, ALNUM, 59),
         ["export GH_PAT={}", "use {} for the CI"]),
        ("secret.jwt", lambda: make_jwt(rng, fake),
         ["Authorization: Bearer {}", "curl -H 'Authorization: Bearer {}' https://api", "id_token={}"]),
        ("secret.slack_token", lambda: f"xoxb-{rand(rng, string.digits, 12)}-{rand(rng, string.digits, 13)}-{rand(rng, ALNUM, 24)}",
         ["SLACK_BOT_TOKEN={}", "slack: {}"]),
        ("secret.slack_token", lambda: f"https://hooks.slack.com/services/T{rand(rng, B32, 8)}/B{rand(rng, B32, 8)}/{rand(rng, ALNUM, 24)}",
         ["webhook: {}", "POST {}"]),
        ("secret.stripe_key", lambda: "sk_live_" + rand(rng, ALNUM, rng.choice([24, 99])),
         ["STRIPE_SECRET_KEY={}", "stripe.api_key = \"{}\""]),
        ("secret.openai_key", lambda: "sk-proj-" + rand(rng, ALNUM + "_-", 120) + rand(rng, ALNUM, 4),
         ["OPENAI_API_KEY={}", "client = OpenAI(api_key=\"{}\")"]),
        ("secret.openai_key", lambda: "sk-" + rand(rng, ALNUM, 20) + "T3BlbkFJ" + rand(rng, ALNUM, 20),
         ["openai.api_key = '{}'", "key {} rotated"]),
        ("secret.anthropic_key", lambda: "sk-ant-api03-" + rand(rng, ALNUM + "_-", 93) + "AA",
         ["ANTHROPIC_API_KEY={}", "x-api-key: {}"]),
        ("secret.private_key", lambda: make_private_key(rng),
         ["key.pem:\n{}\n", "Here is my deploy key\n{}\nthanks"]),
        ("secret.generic", lambda: rand(rng, ALNUM + "!#%&*+", rng.randint(14, 32)),
         ["DB_PASSWORD={}\n", "\"client_secret\": \"{}\",", "api_key: {}\n", "smtp_password = '{}'"]),
        # A credential after its HTTP scheme: an opaque bearer token, a Basic user:password.
        ("secret.generic", lambda: rand(rng, ALNUM, rng.randint(4, 8)) + rand(rng, string.digits, 2)
         + rand(rng, ALNUM + "-._~", rng.randint(24, 60)),
         ["Authorization: Bearer {}\n", "curl -H 'authorization: bearer {}' https://api.internal", "bearer {}"]),
        ("secret.generic", lambda: base64.b64encode(
            f"{rand(rng, string.ascii_lowercase, 6)}:{rand(rng, ALNUM + '!#%', rng.randint(10, 20))}".encode()).decode(),
         ["Authorization: Basic {}", "-H \"Authorization: Basic {}\""]),
        ("secret.url_password", lambda: rand(rng, ALNUM + "!%*-_~", rng.randint(6, 30)),
         ["DATABASE_URL=postgres://app_user:{}@db.internal:5432/app", "mongodb+srv://root:{}@cluster0.x1.mongodb.net/",
          "git remote add origin https://deploy:{}@git.example.com/acme/x.git", "redis://default:{}@cache:6379/0",
          "amqp://guest:{}@mq.internal//"]),
        # Issuer keys with a specific prefix or structure.
        ("secret.google_api_key", lambda: "AIza" + rand(rng, ALNUM + "_-", 35),
         ["GOOGLE_MAPS_KEY={}\n", "curl 'https://maps.googleapis.com/maps/api/geocode/json?address=x&key={}'",
          "const firebaseConfig = {{ apiKey: \"{}\", authDomain: \"acme.firebaseapp.com\" }};".replace("{{", "{").replace("}}", "}"),
          "genai.configure(api_key=\"{}\")"]),
        ("secret.gitlab_token", lambda: rng.choice(["glpat-", "gldt-", "glrt-"]) + rand(rng, ALNUM + "_-", rng.choice([20, 20, 26])),
         ["GITLAB_TOKEN={}\n", "gitlab = Gitlab(\"https://gitlab.example.com\", private_token=\"{}\")",
          "glab auth login --hostname gitlab.example.com --stdin <<< {}", "here is my token {} for the runner"]),
        ("secret.npm_token", lambda: "npm_" + rand(rng, ALNUM, 36),
         ["//registry.npmjs.org/:_authToken={}\n", "npm whoami fails with {} since Monday", "npm token {} expired?"]),
        ("secret.pypi_token", lambda: "pypi-AgEIcHlwaS5vcmc" + rand(rng, ALNUM + "_-", rng.randint(120, 200)),
         ["[pypi]\n  username = __token__\n  password = {}\n", "twine upload -u __token__ -p {} dist/*",
          "uv publish --token {}", "poetry config pypi-token.pypi {}"]),
        ("secret.huggingface_token", lambda: "hf_" + rand(rng, string.ascii_letters, 34),
         ["HF_TOKEN={}\n", "huggingface-cli login --token {}", "snapshot_download(repo_id, use_auth_token=\"{}\")",
          "AutoModel.from_pretrained(\"acme/m\", hf_auth=\"{}\")"]),
        ("secret.sendgrid_key", lambda: "SG." + rand(rng, ALNUM + "_-", 22) + "." + rand(rng, ALNUM + "_-", 43),
         ["SENDGRID_API_KEY={}\n", "sg = SendGridAPIClient('{}')", "the sendgrid key is {}", "sendgrid.SendGridAPIClient(\"{}\").send(msg)"]),
        ("secret.shopify_token", lambda: rng.choice(["shpat_", "shpca_", "shppa_", "shpss_"]) + rand(rng, "0123456789abcdef", 32),
         ["X-Shopify-Access-Token: {}", "shopify.Session('acme.myshopify.com', '2024-01', '{}')", "the shopify app secret is {}"]),
        ("secret.databricks_token", lambda: "dapi" + rand(rng, "0123456789abcdef", 32) + rng.choice(["", "-2"]),
         ["DATABRICKS_TOKEN={}\n", "WorkspaceClient(host=\"https://adb-123.azuredatabricks.net\", pat=\"{}\")",
          "databricks configure with {} please"]),
        ("secret.digitalocean_token", lambda: rng.choice(["dop_v1_", "doo_v1_", "dor_v1_"]) + rand(rng, "0123456789abcdef", 64),
         ["DIGITALOCEAN_TOKEN={}\n", "doctl auth init -t {}", "do_client = Client(\"{}\")", "provider \"digitalocean\" {{ token = \"{}\" }}".replace("{{", "{").replace("}}", "}")]),
        ("secret.mailgun_key", lambda: rng.choice(["key-" + rand(rng, "0123456789abcdef", 32),
                                                   rand(rng, "0123456789abcdef", 32) + "-" + rand(rng, "0123456789abcdef", 8)
                                                   + "-" + rand(rng, "0123456789abcdef", 8)]),
         ["MAILGUN_KEY={}\n", "curl -s --user 'api:{}' https://api.mailgun.net/v3/mg.acme.com/messages",
          "mailgun key {} bounced"]),
        ("secret.atlassian_token", lambda: "ATATT3" + rand(rng, ALNUM + "_-", 170) + "=" + rand(rng, "0123456789ABCDEF", 8),
         ["JIRA_API_TOKEN={}\n", "curl -u \"$JIRA_USER:{}\" https://acme.atlassian.net/rest/api/3/myself",
          "confluence token {} stopped working"]),
        ("secret.twilio_key", lambda: "SK" + rand(rng, "0123456789abcdef", 32),
         ["TWILIO_KEY_SID={}\n", "client = Client('{}', api_secret, account_sid)", "twilio key sid {}"]),
        ("secret.twilio_key", lambda: rand(rng, "0123456789abcdef", 32),
         ["TWILIO_AUTH_TOKEN={}\n", "twilio: {}", "client = Client('AC" + "3f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c" + "', '{}')",
          "twilio auth token is {}"]),
        ("secret.azure_key", lambda: rand(rng, ALNUM + "+/", 86) + "==",
         ["DefaultEndpointsProtocol=https;AccountName=acmeprod;AccountKey={};EndpointSuffix=core.windows.net",
          "AZURE_STORAGE_CONNECTION_STRING=\"DefaultEndpointsProtocol=https;AccountName=x1;AccountKey={}\""]),
        ("secret.azure_key", lambda: rand(rng, ALNUM + "+/", 43) + "=",
         ["Endpoint=sb://acme-bus.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={}",
          "Endpoint=sb://acme-eh.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={};EntityPath=orders"]),
        ("secret.azure_key", lambda: rand(rng, ALNUM, 10) + "%2B" + rand(rng, ALNUM, 20) + "%2F" + rand(rng, ALNUM, 12) + "%3D",
         ["https://acmeprod.blob.core.windows.net/reports/q3.csv?sv=2022-11-02&ss=b&srt=o&sp=r&se=2026-12-01T00:00:00Z&spr=https&sig={}",
          "curl 'https://x1.queue.core.windows.net/jobs?sv=2021-08-06&sp=a&sig={}&se=2026-01-01'"]),
        # Credential files: a .netrc entry and a .pgpass line (secret.generic).
        ("secret.generic", lambda: rand(rng, ALNUM + "!#%&*+", rng.randint(12, 28)),
         ["machine api.github.com login deploy password {}\n", "machine gitlab.example.com\n  login ci\n  password {}\n",
          "db.internal:5432:app:app_user:{}\n", "*:*:*:postgres:{}"]),
    ]
    for label, gen, templates in secrets:
        for _ in range(24):
            a, b = rng.choice(templates).split("{}")
            out.append(P().add(a).value(label, gen()).add(b))

    # Obfuscated and multilingual positives: offsets are in the original characters.
    zw = ["\u200b", "\u200c", "\u200d", "\u2060", "\u00ad", "\ufeff"]
    full = str.maketrans("0123456789@.", "０１２３４５６７８９＠．")
    for _ in range(40):
        num = fake.credit_card_number(rng.choice(["visa16", "mastercard", "discover"]))
        r = rng.random()
        if r < 0.35:
            v = "".join(c + (rng.choice(zw) if rng.random() < 0.3 else "") for c in num[:-1]) + num[-1]
        elif r < 0.7:
            v = group4(num).translate(full)
        else:
            v = group4(num, "\u2011")
        a, b = rng.choice(["カード番号：{}です。", "Kartennummer {} bitte belasten", "card {} ok"]).split("{}")
        out.append(P().add(a).value("pci.card_number", v).add(b))
    for _ in range(20):
        e = fake.email()
        a, b = rng.choice(["メール：{}まで", "Écrivez à {} svp", "Пишите на {}."]).split("{}")
        out.append(P().add(a).value("pii.email", e.translate(full) if rng.random() < 0.5 else e).add(b))
    for _ in range(20):
        ssn = fake.ssn()
        v = ssn.translate(full) if rng.random() < 0.5 else ssn.replace("-", "-\u200b")
        out.append(P().add("SSN ").value("pii.us_ssn", v).add(" 本人確認"))

    # Several findings in one document.
    for _ in range(30):
        s = Sample(kind="mixed")
        s.add(f"Customer: {fake.name()}\nEmail: ").value("pii.email", fake.email())
        s.add("\nPhone: ").value("pii.phone", fake.numerify("(###) 555-####").replace("(0", "(2").replace("(1", "(3"))
        s.add("\nSSN: ").value("pii.us_ssn", fake.ssn())
        s.add("\nCard on file: ").value("pci.card_number", fmt_card(rng, fake.credit_card_number("visa16")))
        s.add(f"\nNotes: {fake.sentence()}\n")
        out.append(s)
    return out


def negatives(rng: random.Random, fake: Faker, fakes: dict[str, Faker]) -> list[Sample]:
    out: list[Sample] = []

    def neg(text: str) -> None:
        out.append(Sample(text=text, kind="negative"))

    for _ in range(60):                                          # Luhn-failing near misses
        num = fake.credit_card_number(rng.choice(CARD_TYPES))
        bad = num[:-1] + str((int(num[-1]) + rng.randint(1, 9)) % 10)
        neg(rng.choice(["Card number: {}", "order {} shipped", "ref {}"]).format(fmt_card(rng, bad)))
    for _ in range(40):                                          # invalid and published SSNs
        area = rng.choice(["000", "666", "9" + rand(rng, string.digits, 2)])
        v = rng.choice([f"{area}-{rand(rng, string.digits, 2)}-{rand(rng, string.digits, 4)}",
                        f"{rng.randint(100, 899)}-00-{rand(rng, string.digits, 4)}",
                        f"{rng.randint(100, 665)}-{rng.randint(10, 99)}-0000",
                        "078-05-1120", "219-09-9999", "123-45-6789"])
        neg(rng.choice(["SSN: {}", "example ssn {} from the docs"]).format(v))
    for _ in range(60):                                          # dates without birth context
        d = fake.date_between("-30y", "+2y")
        neg(rng.choice(["Invoice date {}", "Meeting on {} at 10:00", "Released {}.", "expires {}"]).format(
            d.strftime(rng.choice(["%Y-%m-%d", "%m/%d/%Y", "%d.%m.%Y", "%B %d, %Y"]))))
    neg_texts = [
        "Upgrade to version 1.2.3 or v2.10.4-beta", "OID 1.3.6.1.4.1.311.21.7 is Microsoft",
        "MAC 00:1A:2B:3C:4D:5E on eth0", "at 12:30:45 the job ran", "std::vector<int> v; a::b::c();",
        "Order #123456789012 ships in 3-5 days", "UPS 1Z999AA10123456784", "ISBN 978-3-16-148410-0",
        "Total: $1,234.56 (tax 8.25%)", "timestamp 1700000000000", "zip 90210-1234",
        "P/N 123-4567-89", "AKIAIOSFODNN7EXAMPLE is the documented example key",
        "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "SLACK_TOKEN=xoxb-your-token-here",
        "stripe test key sk_test_4eC39HqLyjWDarjtT1zdp7dc",
        "password = get_password()", "api_key = os.environ[\"API_KEY\"]", "token: str = None",
        "def login(user, password): return check(password)", "TOKEN=${SECRET_TOKEN}",
        "password: \"<your password here>\"", "secret_key = settings.SECRET_KEY",
        "if password == confirm_password:", "const apiKey = process.env.API_KEY;",
        "the bearer of this letter is a friend", "Bearer token authentication is described in RFC 6750",
        "basic authentication-over-plain-http is deprecated", "postgres://app_user:${DB_PASSWORD}@db:5432/app",
        "mysql://root:<password>@localhost/db", "https://user@example.com/path", "http://localhost:8080/v1/chat",
        "see https://example.com:8443/login?next=/home", "ssh://git@github.com:22/acme/x.git",
        # Placeholders, documented example keys and look-alike identifiers of the issuer rules.
        "GOOGLE_API_KEY=AIzaSyXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", "apiKey: \"AIza...\"", "Aizawa Ltd",
        "GITLAB_TOKEN=glpat-xxxxxxxxxxxxxxxxxxxx", "create a glpat- token in User Settings",
        "npm_config_cache=/tmp/npm", "NPM_TOKEN=npm_000000000000000000000000000000000000",
        "pypi-AgEIcHlwaS5vcmc is the prefix of every PyPI token", "from huggingface_hub import hf_hub_download",
        "HF_TOKEN=hf_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "hf_transfer is enabled",
        "SENDGRID_API_KEY=SG.xxxxxxxxxxxxxxxxxxxxxx.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "amount in SGD.",
        "shpat_ tokens are Admin API tokens", "SHOPIFY_TOKEN=shpat_00000000000000000000000000000000",
        "dapi_client = DatabricksAPI(host)", "DATABRICKS_TOKEN=dapi<your-token>", "dop_v1_ is the prefix",
        "key-value store", "MAILGUN_KEY=key-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "ATATT3 tokens are Atlassian's",
        "md5 d41d8cd98f00b204e9800998ecf8427e of the empty file", "request id 5f2b9c1e8a7d4f3e9b6c0a1d2e3f4a5b",
        "AccountKey=<storage-account-key>", "SharedAccessKey=${SB_KEY}", "sig=<signature>&sv=2022-11-02",
        "machine learning login page password reset flow", "login deploy password <your password>",
        "at 12:30:45:00 the job ran", "12:30:45:00:17Z\n16:9:4:3:2024q", "localhost:5432:app:app_user:*",
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ\n-----END CERTIFICATE-----",
        "phone: +1 (555) 0100", "Room 101, floor 2, building 3", "score 98.6.7", "call 911 now",
        "The answer is 42 and the year is 2024.", "Use 127.0.0.1.5 as the id",
    ]
    for t in neg_texts:
        neg(t)
    for _ in range(60):                                          # reference numbers
        n = rand(rng, string.digits, rng.randint(5, 12))
        neg(rng.choice(["Order {} confirmed", "Ticket #{} closed", "Invoice INV-2024-{}",
                        "tracking: {}", "Ref. {} / page 3"]).format(n))
    for _ in range(40):                                          # hashes, ids, base64 blobs
        neg(rng.choice([
            f"sha256 {rng.randbytes(32).hex()}", f"commit {rng.randbytes(20).hex()}",
            f"request id {fake.uuid4()}", f"data:image/png;base64,{base64.b64encode(rng.randbytes(600)).decode()}",
            f"blob = \"{base64.b64encode(rng.randbytes(rng.randint(40, 400))).decode()}\"",
            f"nonce={rng.randbytes(16).hex()}"]))
    code = [
        "for (int i = 0; i < 1000000; i++) { total += a[i] * 31; }",
        "SELECT id, email FROM users WHERE created_at > '2023-01-01' LIMIT 100;",
        "def token_count(text: str) -> int:\n    return len(text.split())",
        "password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt())",
        "headers = {\"Authorization\": f\"Bearer {token}\"}",
        "x = [3.14159, 2.71828, 1.41421, 1.73205]", "chmod 0644 /etc/hosts && ls -la",
        "matrix = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]", "kubectl scale deploy web --replicas=12",
    ]
    for t in code:
        neg(t)
    for loc in ["de_DE", "fr_FR", "ja_JP", "zh_CN", "ru_RU", "ar_AA", "ko_KR", "he_IL", "hi_IN"]:
        for _ in range(8):
            neg(fakes[loc].text(300))
    for _ in range(40):
        neg(fake.paragraph(nb_sentences=5))
    return out


def build_corpus(seed: int = SEED) -> list[Sample]:
    rng = random.Random(seed)
    locales = ["en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "nl_NL", "it_IT", "pl_PL", "pt_PT",
               "ja_JP", "zh_CN", "ru_RU", "ar_AA", "ko_KR", "he_IL", "hi_IN"]
    fakes = {}
    for i, loc in enumerate(locales):
        f = Faker(loc)
        f.seed_instance(seed + i)
        fakes[loc] = f
    fake = fakes["en_US"]
    return positives(rng, fake, fakes) + negatives(rng, fake, fakes)


if __name__ == "__main__":
    out = open(sys.argv[1], "w", encoding="utf-8") if len(sys.argv) > 1 else sys.stdout
    for s in build_corpus():
        out.write(json.dumps({"kind": s.kind, "text": s.text, "spans": s.spans}, ensure_ascii=False) + "\n")
