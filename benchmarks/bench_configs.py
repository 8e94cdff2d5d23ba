"""The bundle's configs as benchmarks read them: defaults and objects come from the YAML, never copied constants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"


def bundle_parser(config_name: str, **overrides: Any) -> ConfigParser:
    """A parser over ``bundle/configs/<config_name>`` with overrides set as on the command line (``--key value``)."""
    parser = ConfigParser()
    parser.read_config(CONFIGS / config_name)
    parser.update(overrides)
    return parser


def bundle_default(config_name: str, key: str) -> Any:
    """One default of a bundle config, evaluated (for plain settings such as ``image_size``)."""
    return bundle_parser(config_name).get_parsed_content(key)


def config_imports(config_name: str) -> list[str]:
    """The modules a bundle config imports (its ``imports`` list, without the ``$import``)."""
    statements = bundle_parser(config_name).get("imports", [])
    return [statement.removeprefix("$").removeprefix("import").strip() for statement in statements]


def config_vqvae(**overrides: Any) -> tuple[Any, Any]:
    """train.yaml's VQ-VAE (untrained) and its spec, with overrides as on its command line."""
    parser = bundle_parser("train.yaml", **overrides)
    return parser.get_parsed_content("network_def"), parser.get_parsed_content("vqvae_spec")


def config_prior(vqvae_spec: Any, vqvae_ckpt: str | Path = "", vqvae_sha256: str = "", **overrides: Any
                 ) -> tuple[Any, Any]:
    """train_prior.yaml's Gated PixelCNN (untrained) and its spec, for the codes of a VQ-VAE of that spec."""
    spec = vqvae_spec.state_dict() if hasattr(vqvae_spec, "state_dict") else dict(vqvae_spec)
    parser = bundle_parser("train_prior.yaml", vqvae_spec=spec, vqvae_ckpt=str(vqvae_ckpt),
                           vqvae_sha256=vqvae_sha256, **overrides)
    return parser.get_parsed_content("network_def"), parser.get_parsed_content("prior_spec")
