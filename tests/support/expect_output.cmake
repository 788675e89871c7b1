# Runs COMMAND (a ;-list) and passes only if its exit status is EXIT (a
# number, or "nonzero") AND its combined output matches EXPECT (a regex).
#   cmake -DCOMMAND="exe;arg1" -DEXIT=nonzero -DEXPECT="regex" -P expect_output.cmake
execute_process(COMMAND ${COMMAND}
                RESULT_VARIABLE rc
                OUTPUT_VARIABLE out
                ERROR_VARIABLE err)
message("${out}${err}")
if(NOT rc MATCHES "^[0-9]+$")
  message(FATAL_ERROR "the command did not exit normally: ${rc}")
endif()
if(EXIT STREQUAL "nonzero")
  if(rc EQUAL 0)
    message(FATAL_ERROR "expected a non-zero exit status, got 0")
  endif()
elseif(NOT rc EQUAL EXIT)
  message(FATAL_ERROR "expected exit status ${EXIT}, got ${rc}")
endif()
if(NOT "${out}${err}" MATCHES "${EXPECT}")
  message(FATAL_ERROR "output does not match '${EXPECT}'")
endif()
message("exit status ${rc} and output as expected")
