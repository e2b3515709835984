import pytest

from cadpipe import as_bool


@pytest.mark.parametrize("value", [True, 1, "true", "True", "YES", "yes", "1", "on", " true "])
def test_true_words(value):
    assert as_bool(value) is True


@pytest.mark.parametrize("value", [False, 0, "false", "FALSE", "no", "No", "0", "off"])
def test_false_words(value):
    assert as_bool(value) is False


@pytest.mark.parametrize("value", ["maybe", "", 2, -1, None, [], "tru"])
def test_anything_else_is_an_error_naming_the_id(value):
    with pytest.raises(ValueError, match=r"lung_crop: .* is not a boolean \(use true/false, 1/0 or yes/no\)"):
        as_bool(value, "lung_crop")
