// TensorQueue: hands tensors from a C++ producer thread (the streamer, the loader chain) to
// the Python consumer, one at a time, without copying their bytes.
//
// Contract:
// - Bounded: Push() blocks while `capacity` tensors wait, so the producer never runs ahead
//   of Python by more than that (the streamer's own memory limit bounds the bytes).
// - Each Item carries the streamer's `hold`: the tensor's memory stays valid as long as any
//   copy of it lives (the Python buffer object keeps one).
// - Close() is the consumer leaving: waiting Push() calls and every later one return
//   Cancelled, so the producer stops at its next tensor; queued items are dropped.
// - Finish() is the producer's end (its status); Pop() returns kEnd once the queue drained.
// - Thread-safe; never throws.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "streamer/streamer.h"

namespace mx::python {

struct Item {
  std::string name;
  std::string file;
  std::string dtype;  // safetensors name: "F32", "BF16", ...
  std::vector<uint64_t> shape;
  const char* data = nullptr;
  uint64_t bytes = 0;
  std::shared_ptr<void> hold;  // keeps `data` valid
};

// The Item for a streamed tensor (names copied; bytes shared through `hold`).
Item MakeItem(const streamer::Tensor& tensor, const std::shared_ptr<void>& hold);

class TensorQueue {
 public:
  explicit TensorQueue(size_t capacity) : capacity_(capacity < 1 ? 1 : capacity) {}

  Status Push(Item item);
  void Finish(Status status);
  void Close();

  enum class Next { kItem, kEnd, kTimeout };
  // Waits at most `wait` for an item (the caller polls so that it can notice signals).
  Next Pop(Item* out, std::chrono::milliseconds wait);
  // The producer's status, once Pop() returned kEnd.
  Status status() const;
  bool finished() const;
  bool closed() const;
  // Waits at most `wait` for Finish(); true when it came.
  bool WaitFinished(std::chrono::milliseconds wait);

 private:
  const size_t capacity_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> items_;
  bool closed_ = false;
  bool finished_ = false;
  Status status_;
};

// Runs `job` on its own thread, feeding `queue`; the job's status finishes the queue.
// Stop() closes the queue and joins the thread when it ends within `grace`; a thread still
// blocked then (the streamer waits for memory that Python tensors still hold) is detached:
// it owns its state and stops as soon as that memory is released.
class Producer {
 public:
  using Job = std::function<Status(const std::shared_ptr<TensorQueue>& queue)>;
  Producer(size_t capacity, Job job);
  ~Producer();
  Producer(const Producer&) = delete;
  Producer& operator=(const Producer&) = delete;

  // Shared: a consumer keeps the queue while it waits, even if another thread stops the
  // producer meanwhile.
  std::shared_ptr<TensorQueue> queue() const { return queue_; }
  void Stop(std::chrono::milliseconds grace);

 private:
  std::shared_ptr<TensorQueue> queue_;
  std::thread thread_;
};

}  // namespace mx::python
