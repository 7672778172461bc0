"""`evc grafana up` on the real Docker engine, where no Grafana image can be had:
a plain message, a non-zero exit, no container left behind."""

from evc.engine import docker_client
from tests.conftest import evc


def test_up_without_a_grafana_image_says_what_is_missing(workspace):
    image = "127.0.0.1:9/evc-test/no-grafana:none"  # not here, and its registry refuses
    proc = evc("grafana", "up", "--image", image, check=1)
    assert f"No Grafana image '{image}' on this machine, and it cannot be pulled" in proc.stderr
    assert "--image" in proc.stderr and "evc grafana push" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    names = [c.name for c in docker_client().containers.list(all=True)]
    assert f"evc-grafana-{workspace.name}" not in names
    assert (workspace.root / "grafana" / "dashboards" / "evc-fleet.json").is_file()
    assert evc("grafana", "down", check=0).stdout.strip().endswith("not running")
