"""The Ray Serve container's config.yaml, written from ServeSettings without Ray or PyYAML."""

import pytest
import yaml

from helpers.runtime.serve_settings import ServeSettings, ServeSettingsError, application, to_yaml, write_ray_layout


def test_the_yaml_is_the_application_document_and_ray_accepts_it(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    settings = ServeSettings(max_batch_size=8, batch_wait_timeout_s=0.01, max_replicas=3, num_gpus=1)
    write_ray_layout(tmp_path, settings)
    doc = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert doc == application(settings)
    schema = ServeDeploySchema.model_validate(doc)  # what `serve run config.yaml` validates
    dep = schema.applications[0].deployments[0]
    assert schema.applications[0].import_path == "deployment:app" and schema.applications[0].route_prefix == "/"
    assert dep.user_config == {"max_batch_size": 8, "batch_wait_timeout_s": 0.01}
    assert dep.autoscaling_config["max_replicas"] == 3
    assert dep.max_queued_requests == ServeSettings().max_queued_requests > 0  # a bounded queue: 503 beyond it
    assert dep.ray_actor_options.num_cpus == 1 and dep.ray_actor_options.num_gpus == 1
    assert "from helpers.runtime.deployment import build" in (tmp_path / "deployment.py").read_text()


def test_scalars_that_yaml_would_misread_are_quoted():
    assert yaml.safe_load(to_yaml({"a": "x: y", "b": "#c", "c": True, "d": 0.5, "e": [], "f": ["p", 1]})) == {
        "a": "x: y", "b": "#c", "c": True, "d": 0.5, "e": [], "f": ["p", 1]}


@pytest.mark.parametrize("bad", [dict(max_batch_size=0), dict(max_batch_size=65), dict(batch_wait_timeout_s=-1),
                                 dict(min_replicas=3, max_replicas=2), dict(max_replicas=0), dict(num_cpus=0),
                                 dict(max_queued_requests=-1), dict(max_queued_requests=0)])
def test_settings_ray_would_refuse_are_refused_first(bad):
    with pytest.raises(ServeSettingsError, match="Invalid serving settings"):
        ServeSettings(**bad)


def test_unknown_settings_are_named():
    with pytest.raises(ServeSettingsError, match="unknown serving setting.*max_batch"):
        ServeSettings.from_dict({"max_batch": 4})
    assert ServeSettings.from_dict(ServeSettings().to_dict()) == ServeSettings()
