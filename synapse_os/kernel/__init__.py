"""The kernel stage: a tuned .config from the profile, resolved by the kernel's own kconfig.

`fragment` is pure and cheap (the renderer calls it); `resolve` runs make in a scratch
build directory and explains every requested symbol that did not come out as asked.
"""
