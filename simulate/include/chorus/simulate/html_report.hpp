#pragma once
// `chorus report RUN_DIR`: one self-contained HTML page (inline SVG, no
// script, no network) of a run directory of `chorus simulate` or `chorus
// coordinator`. Torch-free.

#include <filesystem>
#include <string>

namespace chorus::simulate {

/// The page, from what the run directory holds: report.json (the results
/// table of simulate, or the coordinator's rounds), metrics.jsonl (per
/// round and per node), the nodes' audit logs under nodes/ (simulate:
/// latency percentiles, refusals, budget). Throws `chorus::Error`:
/// NOT_FOUND when the directory holds neither report.json nor
/// metrics.jsonl, DATA_LOSS naming a file that is not what it should be.
std::string render_html_report(const std::filesystem::path& run_dir);

/// Renders it and writes it atomically to `out` (empty: RUN_DIR/report.html);
/// returns the path written.
std::filesystem::path write_html_report(const std::filesystem::path& run_dir,
                                        const std::filesystem::path& out = {});

}  // namespace chorus::simulate
