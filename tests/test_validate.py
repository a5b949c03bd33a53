"""The shared input checks: size bounds, available memory (and its fallbacks), real numbers."""

from unittest import mock

import pytest
import torch

from memadapter import _validate
from memadapter._validate import MAX_SIZES, available_memory_bytes, check_allocation, check_real, check_size
from memadapter.errors import CapacityError, ConfigError, DTypeError, NonFiniteError


def test_check_size_bounds_each_size_by_its_table_entry():
    assert check_size("num_slots", MAX_SIZES["num_slots"]) == MAX_SIZES["num_slots"]
    with pytest.raises(CapacityError, match=r"num_slots: .*exceeds the maximum"):
        check_size("num_slots", MAX_SIZES["num_slots"] + 1)
    with pytest.raises(CapacityError, match="top_k"):
        check_size("top_k", 10**10)
    with pytest.raises(DTypeError, match="top_k"):
        check_size("top_k", 1e3)
    assert check_size("aux_dim", 0, allow_zero=True) == 0


def test_available_memory_reads_proc_meminfo_then_falls_back_to_sysconf():
    found = available_memory_bytes()
    assert found is None or found > 0
    with mock.patch("builtins.open", side_effect=OSError("no /proc")), \
            mock.patch.object(_validate.os, "sysconf", side_effect=lambda name: {"SC_AVPHYS_PAGES": 10,
                                                                                 "SC_PAGE_SIZE": 4096}[name]):
        assert available_memory_bytes() == 10 * 4096
    with mock.patch("builtins.open", side_effect=OSError("no /proc")), \
            mock.patch.object(_validate.os, "sysconf", side_effect=ValueError("unknown name")):
        assert available_memory_bytes() is None  # unknown: bounds alone apply
    assert available_memory_bytes(torch.device("meta")) is None


def test_check_allocation_refuses_more_than_half_of_what_is_available():
    with mock.patch.object(_validate, "available_memory_bytes", return_value=1000):
        check_allocation("num_slots", 500)
        with pytest.raises(CapacityError, match=r"num_slots: would allocate .*\(501 bytes\)"):
            check_allocation("num_slots", 501)
    with mock.patch.object(_validate, "available_memory_bytes", return_value=None):
        check_allocation("num_slots", 10**18)  # availability unknown: let it through


@pytest.mark.parametrize("value,error", [("0.5", DTypeError), (True, DTypeError), (None, DTypeError),
                                         (float("nan"), NonFiniteError), (float("-inf"), NonFiniteError),
                                         (1.5, ConfigError), (-1.01, ConfigError)])
def test_check_real_names_the_argument(value, error):
    with pytest.raises(error, match="threshold"):
        check_real("threshold", value, low=-1.0, high=1.0)


def test_check_real_accepts_ints_and_floats_in_range():
    assert check_real("threshold", 1, low=-1.0, high=1.0) == 1.0
    assert check_real("k1", 0.0, low=0.0) == 0.0
