"""The compiler's passes, one module each: normalize, fuse, precision, layout, plan.

Each graph pass is ``fn(graph, ctx) -> graph`` over a
:class:`~nerve.compiler.context.PassContext` (target, options, bake book, placements); the
``plan`` pass returns the Plan. :mod:`.rewrite` is the pattern-rewrite toolkit they share.
"""
