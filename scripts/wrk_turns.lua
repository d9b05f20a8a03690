-- Loaded by the wrk scripts of bench.sh, ab.sh and instr.sh (run from the repository root).
-- A body holding @@TURN@@ (scripts/large_body.py --turn) gets a number of its own in its place
-- on every request: the same conversation with a new turn each time (KIND=turns). Any other
-- body is sent as it is, without a request() of its own.
if wrk.body and wrk.body:find("@@TURN@@", 1, true) then
  local threads = 0
  function setup(thread) threads = threads + 1; thread:set("tid", threads) end
  local turn = 0
  function request()
    turn = turn + 1
    return wrk.format(nil, nil, nil, (wrk.body:gsub("@@TURN@@", (tid or 0) .. "." .. turn)))
  end
end
