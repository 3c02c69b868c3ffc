// LoaderChain's rules on strategies of its own interface: order, skip reasons, a partial
// result completed without delivering a tensor twice, the consumer's refusal ending the load.
#include "client/loader_chain.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

namespace mx::client {
namespace {

// Delivers the tensors `names` (4 bytes each) and then returns `result`; skipped with
// `skip` when that is not empty.
class ScriptedStrategy : public LoadStrategy {
 public:
  ScriptedStrategy(std::string name, std::vector<std::string> names, Status result,
                   std::string skip = "")
      : name_(std::move(name)), names_(std::move(names)), result_(result), skip_(skip) {}
  std::string name() const override { return name_; }
  std::string SkipReason(const LoadRequest&) override { return skip_; }
  Status Load(const LoadRequest&, TensorSink& sink, std::string* path) override {
    ++runs;
    *path = "/snap/" + name_;
    static const std::string file = "model.safetensors";
    static const char bytes[4] = {1, 2, 3, 4};
    for (const auto& n : names_) {
      safetensors::TensorInfo info;
      info.name = n;
      info.end = 4;
      streamer::Tensor t{file, info, 0, bytes};
      MX_RETURN_IF_ERROR(sink.Deliver(t, nullptr));
    }
    return result_;
  }
  int runs = 0;

 private:
  std::string name_;
  std::vector<std::string> names_;
  Status result_;
  std::string skip_;
};

struct Harness {
  LoaderChain chain;
  std::vector<ScriptedStrategy*> strategies;
  std::map<std::string, int> seen;
  void Add(std::string name, std::vector<std::string> names, Status result, std::string skip = "") {
    auto s = std::make_unique<ScriptedStrategy>(std::move(name), std::move(names), result, skip);
    strategies.push_back(s.get());
    chain.Add(std::move(s));
  }
  Result<LoadReport> Run(LoadReport* report, Status consumer = Status::OK()) {
    LoadRequest r;
    r.model = "org/m";
    return chain.Load(
        r,
        [this, consumer](const streamer::Tensor& t, const std::shared_ptr<void>&) {
          ++seen[t.info.name];
          return consumer;
        },
        report);
  }
};

TEST(LoaderChain, SkipsThenServesInOrder) {
  Harness h;
  h.Add("p2p", {"a"}, Status::OK(), "no sources");
  h.Add("server", {"a", "b"}, Status::OK());
  h.Add("hub", {"a", "b"}, Status::OK());
  LoadReport report;
  auto r = h.Run(&report);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->served_by, "server");
  EXPECT_EQ(r->path, "/snap/server");
  EXPECT_EQ(h.strategies[0]->runs, 0);
  EXPECT_EQ(h.strategies[2]->runs, 0);
  ASSERT_EQ(r->steps.size(), 2u);
  EXPECT_EQ(r->steps[0].outcome, "skipped");
  EXPECT_EQ(r->steps[0].reason, "no sources");
  EXPECT_EQ(r->steps[1].outcome, "served");
  EXPECT_EQ(r->tensors, 2u);
  EXPECT_EQ(r->bytes, 8u);
}

TEST(LoaderChain, PartialResultIsCompletedNotRedelivered) {
  Harness h;
  h.Add("server", {"a", "b"}, Status::Unavailable("server killed"));
  h.Add("uri", {"a", "b", "c"}, Status::OK());
  LoadReport report;
  auto r = h.Run(&report);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->served_by, "uri");
  EXPECT_EQ(h.seen, (std::map<std::string, int>{{"a", 1}, {"b", 1}, {"c", 1}}));
  EXPECT_EQ(h.strategies[0]->runs, 1);  // never re-run
  ASSERT_EQ(r->steps.size(), 2u);
  EXPECT_EQ(r->steps[0].outcome, "failed");
  EXPECT_EQ(r->steps[0].tensors, 2u);
  EXPECT_EQ(r->steps[0].reason, "server killed");
  EXPECT_EQ(r->steps[1].tensors, 1u);
}

TEST(LoaderChain, AllFailNamesEveryStep) {
  Harness h;
  h.Add("p2p", {}, Status::OK(), "no sources");
  h.Add("server", {}, Status::Unavailable("connection refused"));
  h.Add("hub", {}, Status::NotFound("no such repo"));
  LoadReport report;
  auto r = h.Run(&report);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("p2p skipped: no sources"), std::string::npos);
  EXPECT_NE(r.status().message().find("server failed: connection refused"), std::string::npos);
  EXPECT_NE(r.status().message().find("hub failed: no such repo"), std::string::npos);
  EXPECT_EQ(report.steps.size(), 3u);
  EXPECT_TRUE(report.served_by.empty());
}

TEST(LoaderChain, ConsumerRefusalStopsTheChain) {
  Harness h;
  h.Add("server", {"a"}, Status::OK());
  h.Add("hub", {"a"}, Status::OK());
  LoadReport report;
  auto r = h.Run(&report, Status::ResourceExhausted("out of memory"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(h.strategies[1]->runs, 0);
  EXPECT_EQ(report.tensors, 0u);
}

TEST(LoaderChain, DefaultOrder) {
  LoaderChain chain = MakeDefaultChain(nullptr);
  std::vector<std::string> names;
  for (const auto& s : chain.strategies()) names.push_back(s->name());
  EXPECT_EQ(names, (std::vector<std::string>{"p2p", "server", "uri", "cache", "hub"}));
  LoadRequest r;
  r.model = "org/m";
  r.cache_root = "/nonexistent-mx-cache";
  EXPECT_FALSE(chain.strategies()[0]->SkipReason(r).empty());  // no P2P engine given
  EXPECT_FALSE(chain.strategies()[1]->SkipReason(r).empty());  // no server
  EXPECT_EQ(chain.strategies()[2]->SkipReason(r), "MX_MODEL_URI is not set");
  EXPECT_FALSE(chain.strategies()[3]->SkipReason(r).empty());  // not cached
  r.model_uri = "/models/m";
  EXPECT_EQ(chain.strategies()[2]->SkipReason(r), "");
}

}  // namespace
}  // namespace mx::client
