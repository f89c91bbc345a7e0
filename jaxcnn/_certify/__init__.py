"""jaxcnn's own certification, a client of :mod:`jaxcnn.verify`: the op registry and its
samples (:mod:`.registry`), the deliberately wrong rules (:mod:`.mutants`), the runner
(:mod:`.runner`), what ``jaxcnn verify`` prints (:mod:`.display`) and how it compiles
(:mod:`.compilation`). Internal: the public checker is :mod:`jaxcnn.verify`."""
