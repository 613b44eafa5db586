"""The API's contract, against the service as it is deployed (gunicorn, the Procfile's workers
and beat, PostgreSQL, a Redis of its own, an SMTP sink): its OpenAPI document checked by
openapi-spec-validator, Schemathesis fuzzing every operation and its links with positive and
negative data, the docs page in Chromium within the pages' CSP, and a typed client generated
from the live schema running docs/API.md's example."""

import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests
from openapi_spec_validator import validate

from harness.processes import RedisServer, SmtpSink, fresh_database
from harness.service import Service

pytestmark = [
    pytest.mark.processes,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.xdist_group("api-contract"),
]

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "contract-api-key-0123456789abcdef"
BIN = Path(sys.executable).parent
OPERATIONS = 8


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api-contract")
    with ExitStack() as cleanup:
        database_url = cleanup.enter_context(fresh_database(migrated=True))
        mail = cleanup.enter_context(SmtpSink().running())
        (tmp / "redis").mkdir()
        broker = cleanup.enter_context(RedisServer(tmp / "redis").running())
        service = Service(
            tmp=tmp,
            database_url=database_url,
            broker_url=broker.url(),
            api_key=API_KEY,
            env={
                "EMAIL_URL": f"smtp://127.0.0.1:{mail.port}",
                "EMAIL_BACKEND": "",
                "CONN_MAX_AGE": "0",
                "WORKER_CONCURRENCY": "1",
                # The fuzzer is one client with one key sending thousands of requests.
                "SIGNUP_RATE_LIMIT_API": "1000000/m",
                "SIGNUP_RATE_LIMIT_BAD_LINKS": "1000000/m",
                "SIGNUP_ADDRESS_COOLDOWN": "0",
            },
        )
        # The docs page's Swagger UI is a static file, collected as a deployment does.
        subprocess.run(
            [str(BIN / "python"), "manage.py", "collectstatic", "--noinput", "-v0"],
            cwd=ROOT, env=service.env, check=True, timeout=120,
        )  # fmt: skip
        cleanup.callback(service.stop)
        service.start()
        yield service, mail


def schema_of(service) -> dict:
    answer = requests.get(f"{service.url}/api/openapi.json", timeout=10)
    assert answer.status_code == 200
    return answer.json()


def test_the_document_is_openapi_31_and_says_every_answer(live):
    service, _mail = live
    schema = schema_of(service)
    validate(schema)  # raises on anything OpenAPI 3.1 does not allow
    assert schema["openapi"].startswith("3.1")
    assert schema["components"]["securitySchemes"] == {
        "ApiKey": {"type": "http", "scheme": "bearer"}
    }
    operations = [op for path in schema["paths"].values() for op in path.values()]
    assert len(operations) == OPERATIONS
    for operation in operations:
        responses = operation["responses"]
        assert {"401", "403", "429"} <= set(responses), operation["operationId"]
        for code, response in responses.items():
            if int(code) >= 400:
                assert list(response["content"]) == ["application/problem+json"]
        assert "Retry-After" in responses["429"]["headers"]
        if "requestBody" in operation:
            assert {"400", "413", "415", "422"} <= set(responses), operation["operationId"]
            assert any(p["name"] == "Idempotency-Key" for p in operation.get("parameters", [])) or (
                operation["operationId"] == "verify_signup"
            )
    links = schema["paths"]["/api/signups"]["post"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in links.values()} >= {"read_signup", "cancel"}


@pytest.mark.timeout(int(os.environ.get("FUZZ_TIMEOUT", "600")) + 60)
def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_schema(live, tmp_path):
    """Every operation, the links from a created signup (read, act), positive and negative
    data, with the repository's seed and example counts (schemathesis.toml); `make fuzz` sets
    FUZZ_SEED and FUZZ_EXAMPLES for a longer run."""
    service, _mail = live
    options = []
    if os.environ.get("FUZZ_EXAMPLES"):
        options += ["--max-examples", os.environ["FUZZ_EXAMPLES"]]
    if os.environ.get("FUZZ_SEED"):
        options += ["--seed", os.environ["FUZZ_SEED"]]
    command = [
        str(BIN / "schemathesis"),
        "--config-file", str(ROOT / "schemathesis.toml"),
        "run", f"{service.url}/api/openapi.json",
        # Every check but positive_data_acceptance (schemathesis.toml says why).
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--report", "ndjson", "--report-dir", str(tmp_path),
        "--no-color",
        *options,
    ]  # fmt: skip
    env = {**os.environ, "SIGNUP_API_KEY": API_KEY}
    timeout = float(os.environ.get("FUZZ_TIMEOUT", "600"))
    # Run where its cache (.schemathesis/) is thrown away with the test's directory.
    run = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path
    )
    print(run.stdout[-20000:])
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert "Traceback" not in service.logs(), "a process logged a traceback during the fuzzing"


def test_the_docs_page_renders_within_the_pages_csp(live):
    from playwright.sync_api import sync_playwright

    from tests.conftest import CHROMIUM_FLAGS

    service, _mail = live
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    refused, elsewhere = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.on("console", lambda message: refused.append(message.text))
        page.on(
            "request",
            lambda request: (
                None
                if request.url.startswith((service.url, "data:"))
                else elsewhere.append(request.url)
            ),
        )
        answer = page.goto(f"{service.url}/api/docs")
        assert "default-src 'none'" in answer.headers["content-security-policy"]
        page.wait_for_selector(".opblock", timeout=20_000)
        assert page.locator(".opblock").count() == OPERATIONS
        browser.close()
    assert elsewhere == []
    assert not [text for text in refused if "Content Security Policy" in text], refused


def test_a_client_generated_from_the_live_schema_creates_and_verifies_a_signup(live, tmp_path):
    """docs/API.md's example, as written there, with the client openapi-python-client makes."""
    service, mail = live
    (tmp_path / "schema.json").write_text(json.dumps(schema_of(service)))
    (tmp_path / "config.yaml").write_text("package_name_override: signup_client\n")
    generate = subprocess.run(
        [
            str(BIN / "openapi-python-client"), "generate",
            "--path", str(tmp_path / "schema.json"),
            "--config", str(tmp_path / "config.yaml"),
            "--output-path", str(tmp_path / "signup_client"),
            "--meta", "none",
        ],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"},  # its ruff
    )  # fmt: skip
    assert generate.returncode == 0, generate.stdout + generate.stderr
    example = _python_example()
    run = subprocess.run(
        [sys.executable, "-c", example],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={
            **os.environ,
            "SIGNUP_URL": service.url,
            "SIGNUP_API_KEY": API_KEY,
        },
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "created ada_client: pending" in run.stdout
    (email,) = service_wait(mail, "ada@client.example")
    code = re.search(r"signed up: (\S+)", email.text).group(1)
    verify = subprocess.run(
        [sys.executable, "-c", example, code],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "SIGNUP_URL": service.url, "SIGNUP_API_KEY": API_KEY},
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "verified ada_client: done" in verify.stdout


def service_wait(mail, address: str):
    from tests.helpers import wait_for

    return wait_for(lambda: [m for m in mail.received if address in m.recipients], timeout=30)


def _python_example() -> str:
    """The Python block of docs/API.md marked as the generated client's example."""
    text = (ROOT / "docs" / "API.md").read_text()
    match = re.search(r"<!-- client example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/API.md has no client example"
    return match.group(1)
