#include "answer_store.hpp"

#include <fmt/format.h>
#include <torch/serialize.h>

#include <sstream>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"
#include "chorus/fusion/archive.hpp"

namespace chorus::coordinator {

namespace fs = std::filesystem;

AnswerStore::AnswerStore(fs::path dir) : dir_(std::move(dir)) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  CHORUS_CHECK_CODE(!ec, Code::kInternal, "cannot create {}: {}", dir_.string(),
                    ec.message());
}

void AnswerStore::load() {
  auto log = log::get("coordinator");
  std::error_code ec;
  if (!fs::is_directory(dir_, ec)) return;
  for (const auto& entry : fs::directory_iterator(dir_)) {
    const auto name = entry.path().filename().string();
    const auto dot = name.find(".slice");
    if (dot == std::string::npos || entry.path().extension() != ".pt") {
      continue;
    }
    const auto node = name.substr(0, dot);
    const auto part = name.find(".part", dot);
    try {
      const int slice = std::stoi(name.substr(dot + 6));
      std::vector<torch::Tensor> t;
      // A file whose checksums fail is refused: what it held is asked again.
      std::istringstream in(fusion::read_verified_archive(entry.path()));
      torch::load(t, in);
      CHORUS_CHECK_CODE(t.size() == 2, Code::kDataLoss, "expected 2 tensors");
      std::vector<std::int64_t> l(t[1].data_ptr<std::int64_t>(),
                                  t[1].data_ptr<std::int64_t>() + t[1].numel());
      if (labels_.count(node) && labels_[node] != l) continue;
      labels_[node] = l;
      if (part != std::string::npos) {
        partial_[node][slice][std::stoll(name.substr(part + 5))] = t[0];
      } else {
        answers_[node][slice] = t[0];
      }
    } catch (const Error& e) {
      log->warn(
          "event=checkpoint_refused file={} error=\"{}\" action=ask_again",
          entry.path().string(), describe(e));
    } catch (const std::exception& e) {
      log->warn("event=checkpoint_skipped file={} error=\"{}\"",
                entry.path().string(), e.what());
    }
  }
}

void AnswerStore::set_labels(const std::string& node,
                             std::vector<std::int64_t> labels) {
  auto it = labels_.find(node);
  if (it != labels_.end() && it->second != labels) {
    log::get("coordinator")
        ->warn("node={} event=task_changed action=discard_answers", node);
    answers_.erase(node);
    partial_.erase(node);
  }
  labels_[node] = std::move(labels);
}

bool AnswerStore::has(const std::string& node, int slice) const {
  auto it = answers_.find(node);
  return it != answers_.end() && it->second.count(slice) > 0;
}

const torch::Tensor& AnswerStore::answers(const std::string& node,
                                          int slice) const {
  return answers_.at(node).at(slice);
}

AnswerStore::Resumed AnswerStore::resumed(const std::string& node, int slice,
                                          std::int64_t begin) {
  Resumed out;
  out.end = begin;
  auto n = partial_.find(node);
  if (n == partial_.end()) return out;
  auto s = n->second.find(slice);
  if (s == n->second.end()) return out;
  const auto& known = s->second;
  for (auto it = known.find(out.end); it != known.end();
       it = known.find(out.end)) {
    out.parts.push_back(it->second);
    out.files.push_back(part_file(node, slice, out.end));
    out.end += it->second.size(0);
  }
  return out;
}

fs::path AnswerStore::part_file(const std::string& node, int slice,
                                std::int64_t row) const {
  return dir_ / fmt::format("{}.slice{}.part{}.pt", node, slice, row);
}

fs::path AnswerStore::slice_file(const std::string& node, int slice) const {
  return dir_ / fmt::format("{}.slice{}.pt", node, slice);
}

void AnswerStore::write(const fs::path& file, const torch::Tensor& answers,
                        const torch::Tensor& labels) {
  std::ostringstream out;
  torch::save(std::vector<torch::Tensor>{answers, labels}, out);
  write_file_atomic(file, std::move(out).str());
}

void AnswerStore::complete(const std::string& node, int slice,
                           torch::Tensor answers) {
  answers_[node][slice] = std::move(answers);
  auto n = partial_.find(node);
  if (n != partial_.end()) n->second.erase(slice);
}

}  // namespace chorus::coordinator
