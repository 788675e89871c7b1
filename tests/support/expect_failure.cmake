# Runs COMMAND (a ;-list) and passes only if it exits non-zero AND its output
# matches EXPECT (a regex). Used to prove that the test harness reports
# failures instead of aborting or passing silently.
#   cmake -DCOMMAND="exe;arg1;arg2" -DEXPECT="regex" -P expect_failure.cmake
execute_process(COMMAND ${COMMAND}
                RESULT_VARIABLE rc
                OUTPUT_VARIABLE out
                ERROR_VARIABLE err)
message("${out}${err}")
if(rc EQUAL 0)
  message(FATAL_ERROR "expected a non-zero exit status, got 0")
endif()
if(NOT rc MATCHES "^[0-9]+$")
  message(FATAL_ERROR "the command did not exit normally: ${rc}")
endif()
if(NOT "${out}${err}" MATCHES "${EXPECT}")
  message(FATAL_ERROR "output does not match '${EXPECT}'")
endif()
message("exit status ${rc} and output as expected")
