"""Choosing an attention backend: unavailable ones fail with a fix the user can act on."""

from __future__ import annotations

import importlib.util

import pytest

from videox_fun.models.attention import available_backends, resolve_backend


@pytest.mark.parametrize(
    ("backend", "module", "hint"),
    [
        ("sage", "sageattention", "pip install sageattention"),
        ("flash_attn", "flash_attn", "pip install flash-attn"),
        ("flash_attn3", "flash_attn_interface", "flash-attention repo"),
    ],
)
def test_missing_kernel_package_names_what_to_install(backend, module, hint):
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    with pytest.raises(ValueError, match=f"attention backend '{backend}'") as caught:
        resolve_backend(backend)
    assert hint in str(caught.value)
    assert "available here: " + ", ".join(available_backends()) in str(caught.value)


def test_sdpa_and_auto_always_resolve():
    assert resolve_backend("sdpa") == "sdpa"
    assert resolve_backend("auto") in available_backends()
