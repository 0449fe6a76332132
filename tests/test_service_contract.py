"""Contract fuzzing: requests generated from the service's own OpenAPI schema, sent to the real server; no 5xx.

Schemathesis reads /openapi.json from the running service and, for every
operation, sends Hypothesis-generated requests (valid ones and ones that bend
the schema: wrong types, out-of-range numbers, odd bytes for uploads). Any
answer of 500 or more fails the test, as does an answer that the schema does
not describe. The changing operations run with the token, on a collection of
their own, so what they add and remove is real.
"""

from __future__ import annotations

import shutil

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from test_service import PHOTOS, Server, update

from imagesearch.service import Settings

TOKEN = "fuzz-token"


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, repo_root, random_resnet):
    root = tmp_path_factory.mktemp("contract")
    images = root / "images"
    images.mkdir()
    for path in sorted((repo_root / "images").glob("*.jpg")):
        if path.name.split("__")[0] in PHOTOS[:1]:
            shutil.copy(path, images / path.name)
    update(images, root / "artifacts", random_resnet)
    service = Settings(root / "artifacts", weights="random", runtime="tensorflow", token=TOKEN)
    with pytest.warns(UserWarning), Server(service) as client:
        yield schemathesis.openapi.from_url(f"{client.base_url}/openapi.json")


def test_no_request_gets_a_server_error(api_schema):
    """Each operation in turn (Schemathesis' pytest plug-in does not load under this pytest: the strategies are
    driven with Hypothesis directly)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {f"{operation.method.upper()} {operation.path}" for operation in operations} >= {
        "POST /search", "GET /images/{image_id}/neighbours", "POST /images", "DELETE /images/{image_id}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=[not_a_server_error])

        fuzz()
