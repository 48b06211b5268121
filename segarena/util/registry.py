"""A small name -> factory registry (the style of timm's optimizer registry)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from segarena.errors import UserError
from segarena.util.text import did_you_mean


class Registry:
    """Maps names to factories; unknown names are UserErrors with a did-you-mean."""

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return decorate

    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._factories:
            raise UserError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self.names())} "
                f"(known: {', '.join(self.names())})"
            )
        return self._factories[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)
