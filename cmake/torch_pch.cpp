// The source of chorus_torch_pch: the target exists to precompile the torch
// headers once for every target that reuses them (cmake/ChorusTargets.cmake).
