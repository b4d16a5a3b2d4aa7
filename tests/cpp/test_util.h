// Helpers shared by the GoogleTest files.
#pragma once

#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <exception>
#include <initializer_list>
#include <string>
#include <utility>

namespace posenc_test {

// Runs f and expects an exception of type E (c10::Error or a subclass such as
// c10::ValueError) whose message, without the backtrace, contains every needle.
template <typename E = c10::Error, typename F>
void expect_error(F&& f, std::initializer_list<const char*> needles) {
  try {
    f();
    ADD_FAILURE() << "no exception thrown, expected: " << (needles.size() ? *needles.begin() : "");
  } catch (const E& e) {
    const std::string msg = e.what_without_backtrace();
    for (const char* n : needles) {
      EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

template <typename E = c10::Error, typename F>
void expect_error(F&& f, const std::string& needle) {
  expect_error<E>(std::forward<F>(f), {needle.c_str()});
}

}  // namespace posenc_test
