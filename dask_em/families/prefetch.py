"""A cache prefetch hint for compiled loops that read rows of a block out of order.

The missing-value kernels read a block's rows with NaN in the order of their patterns
(:func:`~dask_em.families.gaussian_missing_patterns.pattern_order`), so each row is a
jump the hardware prefetcher cannot follow; in a worker the block is no longer in cache
by then, and each row waited for main memory: 3.8 ms for the 50,984 rows with NaN of a
62,500-row block (D=16, float64, caches flushed first) against 1.2 ms in block order.
Asking for the row 16 ahead while copying the current one (LLVM's ``llvm.prefetch``,
a hint with no effect on results; every cache line of the row) brings it to 1.2 ms.
numba has no prefetch of its own, so :func:`prefetch` is a numba intrinsic; without
numba it is a no-op.
"""

from __future__ import annotations

from dask_em.families.jit import HAVE_NUMBA

#: How many rows ahead a gather asks for (8 to 16 were equally good here; 32 worse).
ROWS_AHEAD = 16

if HAVE_NUMBA:
    import llvmlite.binding
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    # the intrinsic's name carries its pointer type: typed (i8*) before LLVM 17,
    # opaque after (newer LLVM also accepts the old name, upgrading it)
    _NAME = (
        "llvm.prefetch.p0" if llvmlite.binding.llvm_version_info[0] >= 17 else "llvm.prefetch.p0i8"
    )

    @intrinsic
    def prefetch(typingctx, array, row, column):
        """Hint that ``array[row, column]`` (a 2-D array) is read soon: read access,
        high locality, data cache."""
        if not (isinstance(array, types.Array) and array.ndim == 2):
            return None  # a typing error: only 2-D arrays
        signature = types.void(array, row, column)

        def codegen(context, builder, sig, args):
            array_type = sig.args[0]
            values = context.make_array(array_type)(context, builder, args[0])
            indices = [
                context.cast(builder, args[1], sig.args[1], types.intp),
                context.cast(builder, args[2], sig.args[2], types.intp),
            ]
            pointer = cgutils.get_item_pointer(
                context, builder, array_type, values, indices, wraparound=False
            )
            byte_pointer = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            function_type = ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32])
            function = cgutils.get_or_insert_function(builder.module, function_type, _NAME)
            builder.call(function, [builder.bitcast(pointer, byte_pointer), i32(0), i32(3), i32(1)])
            return context.get_dummy_value()

        return signature, codegen

else:  # pragma: no cover - without numba the kernels run as NumPy

    def prefetch(array, row, column):
        """No-op: a hint for compiled code only."""
