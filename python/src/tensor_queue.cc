#include "tensor_queue.h"

#include "safetensors/dtype.h"

namespace mx::python {

Item MakeItem(const streamer::Tensor& tensor, const std::shared_ptr<void>& hold) {
  Item item;
  item.name = tensor.info.name;
  item.file = tensor.file;
  item.dtype = std::string(safetensors::DTypeName(tensor.info.dtype));
  item.shape = tensor.info.shape;
  item.data = tensor.data;
  item.bytes = tensor.info.bytes();
  item.hold = hold;
  return item;
}

Status TensorQueue::Push(Item item) {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return closed_ || items_.size() < capacity_; });
  if (closed_) return Status(StatusCode::kCancelled, "the Python consumer stopped reading");
  items_.push_back(std::move(item));
  cv_.notify_all();
  return Status::OK();
}

void TensorQueue::Finish(Status status) {
  std::lock_guard<std::mutex> l(mu_);
  finished_ = true;
  status_ = std::move(status);
  cv_.notify_all();
}

void TensorQueue::Close() {
  std::deque<Item> dropped;  // released outside the lock: a hold's deleter may take locks
  {
    std::lock_guard<std::mutex> l(mu_);
    closed_ = true;
    dropped.swap(items_);
  }
  cv_.notify_all();
}

TensorQueue::Next TensorQueue::Pop(Item* out, std::chrono::milliseconds wait) {
  std::unique_lock<std::mutex> l(mu_);
  if (!cv_.wait_for(l, wait, [&] { return !items_.empty() || finished_; })) {
    return Next::kTimeout;
  }
  if (items_.empty()) return Next::kEnd;
  *out = std::move(items_.front());
  items_.pop_front();
  cv_.notify_all();
  return Next::kItem;
}

Status TensorQueue::status() const {
  std::lock_guard<std::mutex> l(mu_);
  return status_;
}

bool TensorQueue::finished() const {
  std::lock_guard<std::mutex> l(mu_);
  return finished_;
}

bool TensorQueue::closed() const {
  std::lock_guard<std::mutex> l(mu_);
  return closed_;
}

bool TensorQueue::WaitFinished(std::chrono::milliseconds wait) {
  std::unique_lock<std::mutex> l(mu_);
  return cv_.wait_for(l, wait, [&] { return finished_; });
}

Producer::Producer(size_t capacity, Job job) : queue_(std::make_shared<TensorQueue>(capacity)) {
  // The thread holds its own reference to the queue (and `job` owns whatever it uses), so
  // it may outlive this object.
  thread_ = std::thread([queue = queue_, job = std::move(job)] { queue->Finish(job(queue)); });
}

Producer::~Producer() { Stop(std::chrono::milliseconds(2000)); }

void Producer::Stop(std::chrono::milliseconds grace) {
  if (!thread_.joinable()) return;
  queue_->Close();
  if (queue_->WaitFinished(grace)) {
    thread_.join();
  } else {
    thread_.detach();
  }
}

}  // namespace mx::python
