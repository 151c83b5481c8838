"""Running images (`acbuild-py run`): the rendered-rootfs cache, dependencies rendered in
AppC order, the app in the sandbox.

May import: acbuild.build and every layer below it.
"""
