#pragma once
// The answers the nodes gave, by node and slice of the transfer pool, and
// their checkpoints under <run>/checkpoints/answers/: a complete slice in
// <node>.slice<s>.pt, each answered request of an unfinished slice in
// <node>.slice<s>.part<row>.pt (written as it arrives, so that a crash
// loses only the requests in flight). Every file holds the answers and the
// node's label indices. Not thread-safe: the rounds' strand owns it while a
// fan-out runs, the round's thread between them.
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace chorus::coordinator {

class AnswerStore {
 public:
  /// Creates `dir` when missing. Throws `chorus::Error` (INTERNAL).
  explicit AnswerStore(std::filesystem::path dir);

  /// Reads every checkpoint in the directory; a file that cannot be read,
  /// or whose labels disagree with the node's others, is skipped with a
  /// warning.
  void load();

  /// Each node's labels (indices into the label space) its answers are
  /// over.
  std::map<std::string, std::vector<std::int64_t>>& labels() { return labels_; }
  /// Takes `node`'s labels; answers kept under other labels (its task
  /// changed) are dropped, with a warning.
  void set_labels(const std::string& node, std::vector<std::int64_t> labels);

  /// Whether `slice` of `node` is complete, and its answers.
  bool has(const std::string& node, int slice) const;
  const torch::Tensor& answers(const std::string& node, int slice) const;

  /// Requests of an unfinished slice answered before a crash, contiguous
  /// from row `begin`: their answers, their files, and the row they end at.
  struct Resumed {
    std::vector<torch::Tensor> parts;
    std::vector<std::filesystem::path> files;
    std::int64_t end = 0;
  };
  Resumed resumed(const std::string& node, int slice, std::int64_t begin);

  /// Where one request's answers, starting at row `row` of the pool, and a
  /// complete slice are written.
  std::filesystem::path part_file(const std::string& node, int slice,
                                  std::int64_t row) const;
  std::filesystem::path slice_file(const std::string& node, int slice) const;

  /// Writes `answers` and `labels` to `file` atomically (blocking: run it
  /// off the network loop).
  static void write(const std::filesystem::path& file,
                    const torch::Tensor& answers, const torch::Tensor& labels);

  /// Records `slice` of `node` as complete (its file is written).
  void complete(const std::string& node, int slice, torch::Tensor answers);

 private:
  std::filesystem::path dir_;
  // node → slice → [rows of the slice, |labels|].
  std::map<std::string, std::map<int, torch::Tensor>> answers_;
  // node → slice → first row → answers of one request of an unfinished
  // slice.
  std::map<std::string, std::map<int, std::map<std::int64_t, torch::Tensor>>>
      partial_;
  std::map<std::string, std::vector<std::int64_t>> labels_;
};

}  // namespace chorus::coordinator
