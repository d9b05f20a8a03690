#!/usr/bin/env python3
"""Generates the redaction corpus in tests/fixtures/secrets/ (deterministic: fixed seed).

positives.jsonl: {"kind", "secret", "text"}: a realistic credential embedded the way coding
agents paste it (source code, env files, JSON, YAML, logs, stack traces, diffs). A redactor
passes a case when `secret` no longer appears in the text it forwards.
negatives.jsonl: {"kind", "text"}: benign look-alikes that must pass byte-identical.

Every secret here is random and fake. Run: python3 scripts/gen_secret_corpus.py
"""
import base64
import json
import os
import random
import string
import uuid

R = random.Random(20261124)
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "secrets")

UP = string.ascii_uppercase
LO = string.ascii_lowercase
DIG = string.digits
ALNUM = UP + LO + DIG
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "-_"
HEX = "0123456789abcdef"


def rand(chars, n):
    while True:
        s = "".join(R.choice(chars) for _ in range(n))
        # Random credentials virtually always mix classes; keep the generator honest about it.
        mixed = any(c.isdigit() for c in chars) and any(c.isalpha() for c in chars)
        if n < 8 or not mixed or (any(c.isdigit() for c in s) and any(c.isalpha() for c in s)):
            return s


def pem(kind):
    body = base64.b64encode(bytes(R.getrandbits(8) for _ in range(R.choice([320, 600, 900])))).decode()
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    label = {"rsa": "RSA PRIVATE KEY", "ec": "EC PRIVATE KEY", "pkcs8": "PRIVATE KEY",
             "openssh": "OPENSSH PRIVATE KEY", "dsa": "DSA PRIVATE KEY"}[kind]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----"


def jwt():
    def seg(d):
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
    head = seg({"alg": R.choice(["HS256", "RS256"]), "typ": "JWT"})
    body = seg({"sub": rand(DIG, 8), "name": "Jane", "iat": R.randint(1600000000, 1800000000)})
    return f"{head}.{body}.{rand(URLSAFE, 43)}"


# kind -> generator of the secret value
GENERATORS = {
    "aws_access_key_id": lambda: R.choice(["AKIA", "ASIA"]) + rand(UP + DIG, 16),
    "aws_secret_access_key": lambda: rand(B64, 40),
    "gcp_api_key": lambda: "AIza" + rand(URLSAFE, 35),
    "gcp_service_account_key": lambda: pem("pkcs8"),
    "google_oauth_client_secret": lambda: "GOCSPX-" + rand(URLSAFE, 28),
    "google_oauth_access_token": lambda: "ya29." + rand(URLSAFE, 120),
    "azure_storage_key": lambda: rand(B64, 86) + "==",
    "azure_client_secret": lambda: rand(ALNUM, 3) + R.choice(DIG) + "Q~" + rand(ALNUM + "_~.-", 34),
    "github_pat": lambda: "ghp_" + rand(ALNUM, 36),
    "github_oauth": lambda: "gho_" + rand(ALNUM, 36),
    "github_app_token": lambda: R.choice(["ghs_", "ghu_"]) + rand(ALNUM, 36),
    "github_fine_grained_pat": lambda: "github_pat_" + rand(ALNUM, 22) + "_" + rand(ALNUM, 59),
    "gitlab_pat": lambda: "glpat-" + rand(URLSAFE, 20),
    "slack_bot_token": lambda: "xoxb-" + rand(DIG, 12) + "-" + rand(DIG, 13) + "-" + rand(ALNUM, 24),
    "slack_user_token": lambda: "xoxp-" + rand(DIG, 12) + "-" + rand(DIG, 12) + "-" + rand(DIG, 13) + "-" + rand(HEX, 32),
    "slack_webhook": lambda: f"https://hooks.slack.com/services/T{rand(UP + DIG, 10)}/B{rand(UP + DIG, 10)}/{rand(ALNUM, 24)}",
    "stripe_secret_key": lambda: R.choice(["sk_live_", "rk_live_", "sk_test_"]) + rand(ALNUM, R.choice([24, 99])),
    "twilio_api_key": lambda: "SK" + rand(HEX, 32),
    "sendgrid_api_key": lambda: "SG." + rand(URLSAFE, 22) + "." + rand(URLSAFE, 43),
    "npm_token": lambda: "npm_" + rand(ALNUM, 36),
    "pypi_token": lambda: "pypi-AgEIcHlwaS5vcmc" + rand(URLSAFE, 70),
    "openai_api_key": lambda: R.choice([
        "sk-proj-" + rand(URLSAFE, 74) + "T3BlbkFJ" + rand(URLSAFE, 74),
        "sk-" + rand(ALNUM, 20) + "T3BlbkFJ" + rand(ALNUM, 20),
        "sk-svcacct-" + rand(URLSAFE, 74) + "T3BlbkFJ" + rand(URLSAFE, 74)]),
    "anthropic_api_key": lambda: "sk-ant-api03-" + rand(URLSAFE, 93) + "AA",
    "huggingface_token": lambda: "hf_" + rand(UP + LO, 34),
    "private_key_rsa": lambda: pem("rsa"),
    "private_key_ec": lambda: pem("ec"),
    "private_key_openssh": lambda: pem("openssh"),
    "jwt": jwt,
    "postgres_url_password": lambda: rand(ALNUM, 16),
    "mongodb_url_password": lambda: rand(ALNUM + "!*", 18),
    "redis_url_password": lambda: rand(ALNUM, 24),
    "https_basic_auth": lambda: "ghp_" + rand(ALNUM, 36),
    "password_assignment": lambda: rand(ALNUM + "!#%&*", R.choice([12, 16, 20])),
    "secret_assignment": lambda: rand(ALNUM, 32),
    "bearer_token": lambda: rand(URLSAFE, 48),
    "generic_api_key": lambda: rand(ALNUM, 40),
    "datadog_api_key": lambda: rand(HEX, 32),
}

HOSTS = ["db.internal", "10.0.3.7", "prod-db.example.com", "localhost:5432", "cluster0.ab1cd.mongodb.net"]


def embed(kind, s):
    """Put the secret into a realistic prompt snippet."""
    host = R.choice(HOSTS)
    if kind == "aws_access_key_id":
        return R.choice([
            f"export AWS_ACCESS_KEY_ID={s}\nexport AWS_DEFAULT_REGION=eu-west-1",
            f"[default]\naws_access_key_id = {s}\nregion = us-east-1",
            f'client = boto3.client("s3", aws_access_key_id="{s}")',
            f"Traceback (most recent call last):\n  File \"deploy.py\", line 12\nbotocore.exceptions.ClientError: key {s} is not authorized",
        ])
    if kind == "aws_secret_access_key":
        return R.choice([
            f"[default]\naws_access_key_id = AKIA{rand(UP + DIG, 16)}\naws_secret_access_key = {s}",
            f"AWS_SECRET_ACCESS_KEY={s}",
            f'{{"AccessKeyId": "ASIA{rand(UP + DIG, 16)}", "SecretAccessKey": "{s}"}}',
            f"+  aws_secret_access_key: {s}",
        ])
    if kind in ("gcp_service_account_key",):
        return json.dumps({"type": "service_account", "project_id": "acme-prod", "private_key_id": rand(HEX, 40),
                           "private_key": s + "\n", "client_email": "svc@acme-prod.iam.gserviceaccount.com"}, indent=2)
    if kind.startswith("private_key"):
        return R.choice([f"$ cat ~/.ssh/id_key\n{s}\n$ ", f"Here is my key file:\n\n```\n{s}\n```\nwhy does ssh reject it?",
                         f"+{s.replace(chr(10), chr(10) + '+')}"])
    if kind == "postgres_url_password":
        return R.choice([f"DATABASE_URL=postgres://app:{s}@{host}/orders", f'engine = create_engine("postgresql://admin:{s}@{host}:5432/app")'])
    if kind == "mongodb_url_password":
        return f'MONGO_URI="mongodb+srv://reader:{s}@{host}/test?retryWrites=true"'
    if kind == "redis_url_password":
        return f"redis.from_url('redis://:{s}@{host}:6379/0')"
    if kind == "https_basic_auth":
        return f"git clone https://x-access-token:{s}@github.com/acme/private.git"
    if kind == "password_assignment":
        return R.choice([f'DB_PASSWORD={s}', f'password = "{s}"', f'  "password": "{s}",', f"    password: {s}",
                         f'conn = connect(user="app", password="{s}")', f"spring.datasource.password={s}",
                         f"MYSQL_ROOT_PASSWORD: '{s}'"])
    if kind == "secret_assignment":
        return R.choice([f'SECRET_KEY = "{s}"', f"client_secret: {s}", f'"api_secret": "{s}"', f"JWT_SECRET={s}"])
    if kind == "bearer_token":
        return R.choice([f"curl -H 'Authorization: Bearer {s}' https://api.internal/v1/users",
                         f"2026-11-24T10:00:01Z DEBUG request headers: {{'authorization': 'Bearer {s}'}}"])
    if kind == "generic_api_key":
        return R.choice([f'API_KEY="{s}"', f"x-api-key: {s}", f'{{"apiKey": "{s}"}}', f"const apiKey = '{s}';"])
    if kind == "datadog_api_key":
        return R.choice([f"DD_API_KEY={s}", f'datadog_api_key = "{s}"'])
    if kind == "slack_webhook":
        return f'requests.post("{s}", json={{"text": "deploy done"}})'
    if kind == "azure_storage_key":
        return f"DefaultEndpointsProtocol=https;AccountName=acmestore;AccountKey={s};EndpointSuffix=core.windows.net"
    if kind == "jwt":
        return R.choice([f"Authorization: Bearer {s}", f'{{"access_token": "{s}", "expires_in": 3600}}',
                         f"token expired: {s}\n    at verify (auth.js:42:11)"])
    name = kind.upper()
    return R.choice([
        f"{name}={s}",
        f'const token = "{s}";',
        f'{{"token": "{s}", "user": "ci"}}',
        f"  token: {s}\n  org: acme",
        f"+TOKEN={s}",
        f"2026-11-24 12:00:00 ERROR auth failed for {s}",
        f"settings = {{'key': '{s}'}}",
    ])


def positives():
    out = []
    kinds = list(GENERATORS)
    for i in range(7 * len(kinds)):
        kind = kinds[i % len(kinds)]
        s = GENERATORS[kind]()
        out.append({"kind": kind, "secret": s, "text": embed(kind, s)})
    return out


WORDS = ("the quick brown fox jumps over lazy dog refactor module function return value error handler request "
         "response stream token budget context window gateway provider tests pass fail build deploy release").split()


def prose():
    return " ".join(R.choice(WORDS) for _ in range(R.randint(8, 40))).capitalize() + "."


def ident():
    parts = [R.choice(WORDS).capitalize() for _ in range(R.randint(3, 7))]
    return R.choice(["".join(parts), "_".join(p.lower() for p in parts), parts[0].lower() + "".join(parts[1:])])


def negatives():
    gens = [
        lambda: ("uuid", f'{{"id": "{uuid.UUID(int=R.getrandbits(128))}", "status": "ok"}}'),
        lambda: ("uuid", f"request_id={uuid.UUID(int=R.getrandbits(128))} took 12ms"),
        lambda: ("git_sha", f"commit {rand(HEX, 40)}\nAuthor: Dev <dev@example.com>\n\n    {prose()}"),
        lambda: ("git_sha", f"{rand(HEX, 7)} {prose()}\n{rand(HEX, 7)} Merge branch 'main'"),
        lambda: ("lockfile", f'"resolved": "https://registry.npmjs.org/{R.choice(WORDS)}/-/{R.choice(WORDS)}-1.2.3.tgz",\n'
                             f'"integrity": "sha512-{base64.b64encode(bytes(R.getrandbits(8) for _ in range(64))).decode()}"'),
        lambda: ("lockfile", f'checksum = "{rand(HEX, 64)}"'),
        lambda: ("go_sum", f"github.com/{R.choice(WORDS)}/{R.choice(WORDS)} v1.{R.randint(0, 9)}.0 h1:{base64.b64encode(bytes(R.getrandbits(8) for _ in range(32))).decode()}"),
        lambda: ("docker_digest", f"FROM rust@sha256:{rand(HEX, 64)}"),
        lambda: ("image_data", f"![screenshot](data:image/png;base64,{base64.b64encode(bytes(R.getrandbits(8) for _ in range(300))).decode()})"),
        lambda: ("minified_js", "!function(e,t){\"object\"==typeof exports?module.exports=t():e.lib=t()}(this,function(){var n={"
                 + ",".join(f"{rand(LO, 1)}{i}:function(e,t,r){{return e+t*r}}" for i in range(R.randint(5, 30))) + "};return n});"),
        lambda: ("identifier", f"fn {ident()}(&self, {ident()}: usize) -> Result<{ident()}, Error> {{ todo!() }}"),
        lambda: ("identifier", f"const {ident()} = new {ident()}({ident()}, {ident()});"),
        lambda: ("prose", prose()),
        lambda: ("prose", prose() + " " + prose()),
        lambda: ("url", f"See https://github.com/acme/{R.choice(WORDS)}/blob/{rand(HEX, 40)}/src/{ident()}.rs#L{R.randint(1, 999)}"),
        lambda: ("url", f"https://docs.example.com/{R.choice(WORDS)}/{R.choice(WORDS)}/{ident()}?page={R.randint(1, 9)}"),
        lambda: ("path", f"/home/dev/projects/{R.choice(WORDS)}/target/debug/deps/{ident().lower()}-{rand(HEX, 16)}.rlib"),
        lambda: ("css", f".btn-{R.choice(WORDS)} {{ color: #{rand(HEX, 6)}; margin: {R.randint(0, 20)}px; }}"),
        lambda: ("stacktrace", f"Exception in thread \"main\" java.lang.NullPointerException\n\tat com.acme.{ident()}.{ident()}({ident()}.java:{R.randint(1, 500)})"),
        lambda: ("env_ref", R.choice(['password = os.environ["DB_PASSWORD"]', "api_key: ${OPENAI_API_KEY}",
                                      'token = getenv("GITHUB_TOKEN")', "DB_PASSWORD=", 'secret: "<your-secret-here>"',
                                      "password: changeme", 'api_key = settings.API_KEY', "export TOKEN=$(vault read -field=token secret/ci)"])),
        lambda: ("numbers", " ".join(str(R.randint(0, 10**12)) for _ in range(R.randint(3, 12)))),
        lambda: ("sql", f"SELECT {ident()}, {ident()} FROM {ident()} WHERE id = '{uuid.UUID(int=R.getrandbits(128))}';"),
        lambda: ("k8s", f"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {R.choice(WORDS)}\n  uid: {uuid.UUID(int=R.getrandbits(128))}"),
        lambda: ("semver", f"{R.choice(WORDS)} = {{ version = \"{R.randint(0, 9)}.{R.randint(0, 40)}.{R.randint(0, 20)}\", features = [\"{R.choice(WORDS)}\"] }}"),
        lambda: ("cargo_output", f"   Compiling {R.choice(WORDS)} v0.{R.randint(1, 9)}.{R.randint(0, 9)}\n    Finished `dev` profile in {R.randint(1, 99)}.{R.randint(0, 99)}s"),
    ]
    out = []
    for i in range(1200):
        kind, text = gens[i % len(gens)]()
        out.append({"kind": kind, "text": text})
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, rows in (("positives.jsonl", positives()), ("negatives.jsonl", negatives())):
        with open(os.path.join(OUT, name), "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{name}: {len(rows)}")


if __name__ == "__main__":
    main()
