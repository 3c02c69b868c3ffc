"""vLLM's general-plugin loader, as vllm/plugins/__init__.py does it: every entry point of
the group, or only those VLLM_PLUGINS names (comma-separated), loaded and called once."""

import logging
import os
from importlib.metadata import entry_points

logger = logging.getLogger(__name__)
DEFAULT_PLUGINS_GROUP = "vllm.general_plugins"
plugins_loaded = False


def load_plugins_by_group(group: str) -> dict:
    allowed = os.environ.get("VLLM_PLUGINS")
    allowed_plugins = None if allowed is None else allowed.split(",")
    discovered = entry_points(group=group)
    plugins = {}
    for plugin in discovered:
        if allowed_plugins is None or plugin.name in allowed_plugins:
            plugins[plugin.name] = plugin.load()
    return plugins


def load_general_plugins() -> None:
    global plugins_loaded
    if plugins_loaded:
        return
    plugins_loaded = True
    for func in load_plugins_by_group(DEFAULT_PLUGINS_GROUP).values():
        func()
