"""Running a program inside an image: namespaces, the PID 1 that enters them
(sandbox_init, standard library only), the seccomp filter, cgroup limits, and one RUN step.

May import: acbuild.distribution, acbuild.interop and the layers below; not acbuild.cache.
"""
