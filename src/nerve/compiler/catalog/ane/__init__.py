"""The ``ane`` target's restrictions: Apple's Neural Engine, as publicly characterised.

Sources: Orion (R. Kumaresan, "Orion: Characterizing and Programming Apple's Neural Engine for
LLM Training and Inference", arXiv 2603.06728, and the ``mechramc/Orion`` repository), through
the digest ``shared/reference/ane-orion-notes.md``. Each check's docstring names the digest
section and the paper's restriction number (#1-#20 of the paper's table, digest §4.1), with the
digest's confidence tag: [C] read in the code, [R] repository prose, [P*] paper body,
[3P] third party.

Fixable restrictions carry a fixer that ``normalize(fix=True)`` (``nerve check --fix``) runs:
decompositions into ops the ANE has, or sending the node to the host engine (the workaround
Orion itself uses: host-side assembly, CPU fallback).

One module per restriction class; importing this package registers them all:
:mod:`.operators` (operator support), :mod:`.layout` (memory layout of I/O surfaces),
:mod:`.resources` (resource limits), :mod:`.compilation` (compilation limits, graph structure),
:mod:`.numerics` (numerical behaviour, weight handling).
"""

from nerve.compiler.catalog.ane import compilation, layout, numerics, operators, resources

__all__ = ["compilation", "layout", "numerics", "operators", "resources"]
