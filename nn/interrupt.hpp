// Stopping long runs cleanly on Ctrl-C (SIGINT) or SIGTERM. While a StopOnSignal is alive, the
// first such signal only sets a flag, which training loops poll between steps: they then write
// their checkpoint and return (marked interrupted), so that the run resumes where it stopped. A
// second signal ends the process at once, as without the handler. Without a StopOnSignal the flag
// never rises and the signals keep their usual effect; a signal the process ignores (a shell's
// background job ignores SIGINT) stays ignored.
#pragma once

namespace tg::nn {

class StopOnSignal {
 public:
  StopOnSignal();   // installs the handlers (and lowers the flag); one at a time
  ~StopOnSignal();  // restores the previous handlers
  StopOnSignal(const StopOnSignal&) = delete;
  StopOnSignal& operator=(const StopOnSignal&) = delete;
};

// Whether a stop was requested (a signal arrived while a StopOnSignal was alive).
bool stop_requested();
// The signal that requested it (SIGINT, SIGTERM), 0 when none.
int stop_signal();

}  // namespace tg::nn
