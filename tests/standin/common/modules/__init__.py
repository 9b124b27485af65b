# Stand-in for the WebUI's `modules` package (tests only). Forge main @ dfdcbab6 and reForge @ 3b56b268
# share these surfaces; where they differ, the running flavour's `standin_flavour` module says how.
