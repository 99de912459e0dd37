"""A PyTorch state_dict goes up as safetensors from two leaves and its aggregate loads back with strict=True."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.aggregator import Running, start
from tests.support.gateways import GatewayFactory

torch = pytest.importorskip(
    "torch",
    reason="PyTorch is not installed in this venv: `.ci/run` installs the CPU build "
    "(.venv/bin/python -m pip install torch==2.13.0); `make test` alone does not.",
)
safetensors_torch = pytest.importorskip("safetensors.torch")

WEIGHTINGS = (3.0, 1.0)


@pytest.fixture
def aggregator(tmp_path: Path) -> Iterator[Running]:
    """A local aggregator whose rounds close once two leaves have uploaded."""
    with start(tmp_path / "agg", min_leaves=2) as running:
        yield running


def _model(seed: int) -> Any:
    """A small network with float32, bfloat16 and integer (BatchNorm counter) state."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)
    )
    model[2].to(torch.bfloat16)
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].num_batches_tracked.fill_(5 * seed)
    return model


def test_state_dict_round_trip_loads_strictly(gateway_for: GatewayFactory, tmp_path: Path) -> None:
    """Two leaves upload `safetensors.torch.save_file(model.state_dict())`; `?format=safetensors`
    gives their weighted mean with every name and dtype, and `load_state_dict(strict=True)` takes it."""
    gateways = [gateway_for(0), gateway_for(1)]
    models = [_model(seed) for seed in (1, 2)]
    after = [gateway.log.bounds()[1] for gateway in gateways]
    for index, (gateway, model, weighting) in enumerate(
        zip(gateways, models, WEIGHTINGS, strict=True)
    ):
        path = tmp_path / f"leaf{index}.safetensors"
        safetensors_torch.save_file(model.state_dict(), str(path))
        with path.open("rb") as stream:
            answer = httpx.post(
                f"{gateway.url}/upload",
                files={"file": (path.name, stream)},
                data={"weighting": str(weighting)},
                timeout=60,
            )
        assert answer.status_code == 201, answer.text
    with httpx.Client(timeout=40) as client:
        events = client.get(
            f"{gateways[0].url}/aggregations", params={"after": after[0], "wait": 30}
        )
        assert events.json(), "no aggregation within 30 s"
        aggregation_id = events.json()[0]["aggregation_id"]
        answer = client.get(
            f"{gateways[0].url}/aggregations/{aggregation_id}", params={"format": "safetensors"}
        )
    assert answer.status_code == 200, answer.text
    aggregate = safetensors_torch.load(answer.content)
    fresh = _model(3)
    fresh.load_state_dict(aggregate, strict=True)
    total = sum(WEIGHTINGS)
    for name, value in fresh.state_dict().items():
        first, second = (model.state_dict()[name] for model in models)
        assert value.dtype == first.dtype, name
        expected = (first.double() * WEIGHTINGS[0] + second.double() * WEIGHTINGS[1]) / total
        if first.dtype.is_floating_point:
            expected_value = expected.float().to(first.dtype)
        else:
            expected_value = expected.round().to(first.dtype)
        torch.testing.assert_close(value, expected_value, rtol=1e-6, atol=1e-6, msg=name)
