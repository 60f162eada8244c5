import pytest

from tests.text.tiny_models import build_checkpoints


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    return build_checkpoints(tmp_path_factory.mktemp("text_checkpoints"))
