"""Example flows, bundled so that ``conveyor demo`` works on a fresh machine."""

from conveyor.examples.demo import demo_flow

__all__ = ["demo_flow"]
