"""The harness starts what the Procfile says: its lines read, their variables filled in as the
shell honcho runs them in would, and each line's role told apart."""

import pytest

from harness.procfile import PROCFILE, Entry, ProcfileError, expand, read_procfile


def test_variables_are_filled_in_as_sh_does():
    env = {"SET": "value", "EMPTY": ""}
    assert expand("$SET ${SET} ${SET:-other}", env) == "value value value"
    assert (
        expand("${UNSET:-fallback} ${EMPTY:-fallback} ${EMPTY-kept}", env) == "fallback fallback "
    )
    assert expand("${UNSET:-$SET}", env) == "value"
    with pytest.raises(ProcfileError, match="not supported"):
        expand("${UNSET:-${SET}}", env)
    assert expand("--name=${UNSET}", env) == "--name="


def test_a_required_variable_that_is_unset_names_itself():
    with pytest.raises(ProcfileError, match="FLOWER_BASIC_AUTH is not set"):
        expand("--basic-auth=${FLOWER_BASIC_AUTH:?set it to user:password}", {})
    with pytest.raises(ProcfileError, match="TOKEN is not set"):
        expand("${TOKEN:?}", {"TOKEN": ""})
    assert expand("${TOKEN?}", {"TOKEN": ""}) == ""


def test_each_line_is_a_command_with_a_role(tmp_path):
    procfile = tmp_path / "Procfile"
    procfile.write_text(
        "# the service\n"
        "web: python manage.py runserver ${WEB_ADDR:-127.0.0.1:8000}\n"
        "\n"
        "worker: celery -A config worker -Q celery --concurrency=${WORKER_CONCURRENCY:-2}\n"
        "email-worker: celery -A config worker -Q email --pool threads --concurrency=${N:-16}\n"
        "beat: celery -A config beat --loglevel=INFO\n"
        "flower: celery -A config flower\n"
    )
    entries = read_procfile(procfile)
    assert list(entries) == ["web", "worker", "email-worker", "beat", "flower"]
    roles = {name: entry.role for name, entry in entries.items()}
    assert roles == {
        "web": "web",
        "worker": "worker",
        "email-worker": "worker",
        "beat": "beat",
        "flower": "other",
    }
    assert entries["email-worker"].command({"N": "50"})[-3:] == [
        "--pool",
        "threads",
        "--concurrency=50",
    ]
    assert entries["worker"].command({})[-1] == "--concurrency=2"


@pytest.mark.parametrize(
    "line", ["worker: celery worker | tee log", "web: a && b", "x: echo $(id)"]
)
def test_a_line_only_a_shell_could_run_is_refused(tmp_path, line):
    procfile = tmp_path / "Procfile"
    procfile.write_text(line + "\n")
    with pytest.raises(ProcfileError, match="without a shell"):
        read_procfile(procfile)


def test_the_projects_procfile_has_a_web_a_beat_and_at_least_one_worker():
    entries = read_procfile(PROCFILE)
    roles = [entry.role for entry in entries.values()]
    assert roles.count("beat") == 1
    assert roles.count("worker") >= 1
    assert entries["worker"].role == "worker"
    assert isinstance(entries["web"], Entry)
