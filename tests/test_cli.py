"""The binaries' bad-input path: the message, no traceback, exit status 2."""

import pytest

from configs import mnist
from l2l_tf import meta
from train import _cli


def test_bad_config_exits_with_the_message_alone(capsys):
    config = mnist.get_config()
    config.meta.unroll_length = 0
    with pytest.raises(SystemExit) as exit_info:
        _cli.checked(meta.validate_config, config)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ValueError: ") and "unroll_length" in err
    assert "Traceback" not in err


def test_good_input_returns_the_value():
    assert _cli.checked(lambda x: x + 1, 1) == 2


def test_other_errors_keep_their_traceback():
    with pytest.raises(KeyError):
        _cli.checked(lambda: {}["x"])
