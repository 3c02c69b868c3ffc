// Which way should the TCP transfer backend send registered memory? Measures one process
// sending `--mib` MiB in 4 MiB answers over `--connections` loopback connections to
// receivers that land the bytes in one buffer, three ways:
//   copy      send() from the memory (what src/transfer/tcp.cc does),
//   zerocopy  send(MSG_ZEROCOPY) from the memory, completions read from the error queue,
//   sendfile  the memory lives in a memfd; sendfile() from it.
// Prints one line per mode: wall seconds, GB/s, CPU seconds (user+sys) of the process.
// Run by bench/p2p.sh (part d); loopback only.
#include <arpa/inet.h>
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif

namespace {

constexpr size_t kAnswer = 4 << 20;

double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec +
         u.ru_stime.tv_usec / 1e6;
}

bool RecvAll(int fd, char* p, size_t n) {
  while (n > 0) {
    ssize_t r = recv(fd, p, n, MSG_WAITALL);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// Reads zerocopy completions until `sent` sends are acknowledged.
bool AwaitCompletions(int fd, uint32_t sent, uint32_t* done) {
  while (*done < sent) {
    pollfd p{fd, 0, 0};
    if (poll(&p, 1, 1000) < 0) return false;
    char control[128];
    msghdr m{};
    m.msg_control = control;
    m.msg_controllen = sizeof(control);
    if (recvmsg(fd, &m, MSG_ERRQUEUE) < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return false;
    }
    for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
      auto* e = reinterpret_cast<sock_extended_err*>(CMSG_DATA(c));
      if (e->ee_origin == SO_EE_ORIGIN_ZEROCOPY) *done = e->ee_data + 1;
    }
  }
  return true;
}

// Sends [off, off+n) of the memory by `mode`.
bool SendRange(const std::string& mode, int fd, const char* mem, int memfd, size_t off, size_t n,
               uint32_t* zc_sent, uint32_t* zc_done) {
  if (mode == "sendfile") {
    off_t o = static_cast<off_t>(off);
    while (n > 0) {
      ssize_t r = sendfile(fd, memfd, &o, n);
      if (r <= 0) return false;
      n -= static_cast<size_t>(r);
    }
    return true;
  }
  int flags = mode == "zerocopy" ? MSG_ZEROCOPY : 0;
  const char* p = mem + off;
  while (n > 0) {
    ssize_t r = send(fd, p, n, flags | MSG_NOSIGNAL);
    if (r < 0 && errno == ENOBUFS && flags != 0) {  // optmem full: reap completions first
      if (!AwaitCompletions(fd, *zc_sent, zc_done)) return false;
      continue;
    }
    if (r <= 0) return false;
    if (flags != 0) ++*zc_sent;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  size_t mib = 1024;
  int connections = 4;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--mib") == 0) mib = std::strtoull(argv[i + 1], nullptr, 10);
    if (std::strcmp(argv[i], "--connections") == 0) connections = std::atoi(argv[i + 1]);
  }
  const size_t total = mib << 20;
  int memfd = memfd_create("probe", 0);
  if (memfd < 0 || ftruncate(memfd, static_cast<off_t>(total)) != 0) return 1;
  char* mem =
      static_cast<char*>(mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0));
  if (mem == MAP_FAILED) return 1;
  for (size_t i = 0; i < total; i += 4096) mem[i] = static_cast<char>(i >> 12);
  std::vector<char> dest(total);
  std::memset(dest.data(), 1, total);  // faulted in before timing, like memcpy's buffers

  for (const std::string mode : {"copy", "zerocopy", "sendfile"}) {
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return 1;
    listen(listener, 64);
    socklen_t len = sizeof(a);
    getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len);
    std::atomic<bool> ok{true};
    double cpu0 = CpuSeconds();
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (int c = 0; c < connections; ++c) {
      threads.emplace_back([&, c] {  // receiver: asks for its share, answer by answer
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) ok = false;
        for (size_t off = c * kAnswer; ok && off < total; off += connections * kAnswer) {
          uint64_t req[2] = {off, std::min(kAnswer, total - off)};
          if (send(fd, req, sizeof(req), 0) != sizeof(req) || !RecvAll(fd, &dest[off], req[1])) {
            ok = false;
          }
        }
        close(fd);
      });
      int s = accept(listener, nullptr, nullptr);
      threads.emplace_back([&, s] {  // sender: answers each request
        int one = 1;
        setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (mode == "zerocopy" && setsockopt(s, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one)) != 0) {
          ok = false;
        }
        uint32_t sent = 0, done = 0;
        uint64_t req[2];
        while (ok && RecvAll(s, reinterpret_cast<char*>(req), sizeof(req))) {
          if (!SendRange(mode, s, mem, memfd, req[0], req[1], &sent, &done)) ok = false;
        }
        if (mode == "zerocopy") AwaitCompletions(s, sent, &done);
        close(s);
      });
    }
    for (auto& t : threads) t.join();
    double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double cpu = CpuSeconds() - cpu0;
    close(listener);
    bool same = std::memcmp(mem, dest.data(), total) == 0;
    std::printf("%s wall_s=%.3f gbps=%.2f cpu_s=%.3f ok=%d\n", mode.c_str(), wall,
                total / wall / 1e9, cpu, ok && same ? 1 : 0);
    std::memset(dest.data(), 1, total);
  }
  return 0;
}
