from dataclasses import dataclass, field
from typing import Any, Callable, Optional


@dataclass
class LoadConfig:
    load_format: str = "auto"
    download_dir: Optional[str] = None
    model_loader_extra_config: dict = field(default_factory=dict)
    device: Optional[str] = None


@dataclass
class ModelConfig:
    model: str
    revision: Optional[str] = None
    dtype: Any = None


@dataclass
class VllmConfig:
    load_config: LoadConfig
    model_config: ModelConfig
    # What vLLM's initialize_model does from the architecture: here, a factory.
    model_factory: Callable[[], Any] = None
