"""deploy/observability against a real Prometheus: promtool's checks of the configuration and
the alert rules, and a Prometheus scraping the service's own processes, in which every query
of the Grafana dashboard and every alert rule must evaluate without an error."""

import json
import re
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.conf import settings as django_settings

from harness.processes import ROOT, Process, SmtpSink, free_port, fresh_database, start_process
from harness.service import BEAT_SWEPT, Service
from tests.helpers import API_KEY, wait_for

OBSERVABILITY = ROOT / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "signup.json"
DATASOURCES = OBSERVABILITY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
METRICS_TOKEN = "observability-test-token-0123456789"
# What Grafana puts in place of its variables; any valid duration will do for a parse check.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
# Counted in the database at each scrape: present whatever the service has done.
DATABASE_SERIES = (
    "signup_signups",
    "signup_verified",
    "signup_emails",
    "signup_emails_waiting",
    "signup_dead_letters",
    "signup_stuck_contacts",
    "signup_stuck_reminders",
    "signup_stuck_emails",
    "signup_stuck_webhooks",
    "signup_seconds_since_last_sweep",
)
PROMTOOL_CHECKS = (
    ["promtool", "check", "config", "--syntax-only", "deploy/observability/prometheus.yml"],
    ["promtool", "check", "rules", "deploy/observability/alerts.yml"],
    ["promtool", "test", "rules", "deploy/observability/alerts.test.yml"],
)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query in the dashboard, with Grafana's variables filled
    in."""
    queries = []
    panels = json.loads(DASHBOARD.read_text())["panels"]
    for panel in panels + [inner for row in panels for inner in row.get("panels", [])]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


# --- Without a running service -------------------------------------------------------------


@pytest.mark.prometheus
def test_promtool_accepts_the_configuration_the_rules_and_their_unit_tests():
    for command in PROMTOOL_CHECKS:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}{done.stderr}"


def test_every_dashboard_panel_reads_the_provisioned_datasource():
    (uid,) = re.findall(r"^\s+uid: (\S+)$", DATASOURCES.read_text(), re.M)
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]


def test_the_alerts_name_the_scrape_job_of_the_configuration():
    # SignupMetricsDown watches up{job="signup"}: a renamed job would silence it.
    assert re.search(
        r"^\s+- job_name: signup$", (OBSERVABILITY / "prometheus.yml").read_text(), re.M
    )
    assert 'up{job="signup"}' in (OBSERVABILITY / "alerts.yml").read_text()


# --- A real Prometheus scraping the service --------------------------------------------------


class Prometheus:
    """A Prometheus server of our own on a free port, scraping `target` every second with the
    bearer token from a file, as the compose profile's does, and evaluating alerts.yml."""

    def __init__(self, tmp: Path, *, target: str, token: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        token_file = tmp / "metrics-token"
        token_file.write_text(token)
        config = tmp / "prometheus.yml"
        # JSON is YAML: no YAML writer needed.
        config.write_text(
            json.dumps(
                {
                    "global": {
                        "scrape_interval": "1s",
                        "scrape_timeout": "1s",
                        "evaluation_interval": "1s",
                    },
                    "rule_files": [str(OBSERVABILITY / "alerts.yml")],
                    "scrape_configs": [
                        {
                            "job_name": "signup",
                            "metrics_path": "/metrics",
                            "authorization": {
                                "type": "Bearer",
                                "credentials_file": str(token_file),
                            },
                            "static_configs": [{"targets": [target]}],
                        }
                    ],
                }
            )
        )
        self.command = [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.process: Process | None = None
        self.tmp = tmp

    def start(self) -> None:
        self.process = start_process(
            "prometheus", self.command, {"PATH": "/usr/bin:/bin"}, self.tmp
        )
        wait_for(self._ready, timeout=20, message=f"Prometheus ready\n{self.process.output()}")

    def stop(self) -> None:
        if self.process:
            self.process.stop()

    def _ready(self) -> bool:
        assert self.process.popen.poll() is None, f"prometheus exited:\n{self.process.output()}"
        try:
            return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def api(self, path: str, **params) -> dict:
        answer = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        return answer.json()

    def error(self, expr: str) -> str | None:
        """Why Prometheus can't evaluate `expr`, or None when it can."""
        body = self.api("query", query=expr)
        if body["status"] == "success":
            return None
        return f"{body.get('errorType')}: {body.get('error')}"

    def query(self, expr: str) -> list[dict]:
        """The instant vector (or scalar) `expr` evaluates to; fails on any error."""
        body = self.api("query", query=expr)
        assert body["status"] == "success", f"{expr}: {body.get('errorType')}: {body.get('error')}"
        result = body["data"]["result"]
        return result if body["data"]["resultType"] == "vector" else [{"value": result}]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


def settle(condition, *, timeout: float) -> None:
    """Poll `condition` until it holds or `timeout` passes; the caller's asserts then say
    what is wrong, with the details wait_for can't give."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)


def verification_token(text: str) -> str:
    match = re.search(r"/signup/verify/([^/\s]+)/\?(\S+)", text)
    assert match, f"no verification link in:\n{text}"
    assert parse_qs(urlsplit(f"?{match.group(2)}").query)["source"] == ["verification"]
    return match.group(1)


@pytest.mark.processes
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.prometheus
def test_prometheus_scrapes_the_service_and_evaluates_every_dashboard_query_and_alert(
    tmp_path, broker
):
    with fresh_database(migrated=True) as database_url, SmtpSink().running() as mail:
        service = Service(
            tmp=tmp_path,
            database_url=database_url,
            broker_url=django_settings.CELERY_BROKER_URL,
            api_key=API_KEY,
            web_workers=1,
            env={
                "SIGNUP_METRICS_TOKEN": METRICS_TOKEN,
                "EMAIL_URL": f"smtp://127.0.0.1:{mail.port}",
                "EMAIL_BACKEND": "",
                "SIGNUP_SWEEP_INTERVAL": "1",
                "CONN_MAX_AGE": "0",
                "WORKER_CONCURRENCY": "1",
            },
        )
        prometheus = Prometheus(tmp_path, target=f"127.0.0.1:{service.port}", token=METRICS_TOKEN)
        try:
            # One worker per queue is all this needs, and starts faster on a small machine.
            service.start_web(wait=False)
            service.start_beat(wait=False)
            workers = [service.start_worker(name, wait=False) for name in ("worker", "email")]
            prometheus.start()
            service.wait_for(service.web_answers, timeout=60, what="the web answered")
            for worker in workers:
                service.wait_until_ready(worker)
            service.wait_until_beat(BEAT_SWEPT)

            # Three signups, one verified through its emailed link: a welcome email follows.
            for name in ("ada", "ben", "cyd"):
                answer = service.api(
                    "POST",
                    "/api/signups",
                    json={"username": name, "email": f"{name}@example.com", "first_name": name},
                )
                assert answer.status_code == 201, answer.text
            wait_for(lambda: len(mail.received) >= 3, timeout=20, message="3 verification emails")
            (to_ada,) = [m for m in mail.received if "ada@example.com" in m.recipients]
            answer = service.api(
                "POST", "/api/signups/verify", json={"token": verification_token(to_ada.text)}
            )
            assert answer.status_code == 200, answer.text
            wait_for(lambda: len(mail.received) >= 4, timeout=20, message="the welcome email")

            def target() -> dict:
                # Prometheus hands discovered targets to its scraper a few seconds after start.
                active = prometheus.api("targets")["data"]["activeTargets"]
                return active[0] if active else {"health": "not discovered", "lastError": ""}

            settle(lambda: target()["health"] == "up", timeout=20)
            assert target()["health"] == "up", target()
            # The scrape that follows the welcome email's send: the ledger says sent.
            wait_for(
                lambda: prometheus.value('max(signup_emails{kind="welcome", status="sent"})') == 1,
                timeout=20,
                message="a scrape after the welcome email",
            )

            # The figures counted in the database.
            for name in DATABASE_SERIES:
                assert prometheus.query(name), f"{name} has no samples"
            assert prometheus.value("sum(signup_signups)") == 3
            assert prometheus.value('signup_signups{status="verified"}') == 1
            assert prometheus.value('signup_verified{source="api"}') == 1
            assert prometheus.value('signup_emails{kind="verification", status="sent"}') == 3
            assert prometheus.value("signup_seconds_since_last_sweep") < 180

            # The figures the email worker measured reach the web's /metrics (multiprocess
            # mode): 3 verification emails and a welcome, each one provider call. The worker
            # counts some just after the ledger says sent: a scrape or two later.
            for expr, expected in (
                ('sum(signup_provider_call_seconds_count{outcome="ok"})', 4),
                ('sum(signup_email_attempts_total{result="sent"})', 4),
                ("sum(signup_verify_to_welcome_seconds_count)", 1),
            ):
                settle(lambda e=expr, n=expected: prometheus.value(e) == n, timeout=10)
                assert prometheus.value(expr) == expected, expr
            assert prometheus.value("sum(signup_sweep_duration_seconds_count)") > 0

            # Every query of the dashboard parses and evaluates (some may be empty: these run
            # before any reminder is due, for example).
            broken = [
                f"{title}: {expr}: {error}"
                for title, expr in dashboard_queries()
                if (error := prometheus.error(expr))
            ]
            assert not broken, "\n".join(broken)

            # Prometheus evaluated every alert rule, without an error, and none holds on this
            # healthy deployment.
            def rules() -> list[dict]:
                groups = prometheus.api("rules", type="alert")["data"]["groups"]
                return [rule for group in groups for rule in group["rules"]]

            settle(
                lambda: all(
                    rule["state"] == "inactive" and not rule["lastEvaluation"].startswith("0001")
                    for rule in rules()
                ),
                timeout=10,
            )
            evaluated = rules()
            assert len(evaluated) == 8
            for rule in evaluated:
                assert not rule["lastEvaluation"].startswith("0001"), f"never evaluated: {rule}"
                assert (rule["health"], rule.get("lastError", "")) == ("ok", ""), rule
                assert rule["state"] == "inactive", rule
                prometheus.query(rule["query"])
        finally:
            prometheus.stop()
            service.stop()
