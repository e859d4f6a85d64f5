-- A commit-heavy InnoDB stream beside readers, for sysbench 1.0 (the VM tier's MariaDB test and
-- bench/bench_vm_db.py).
--
--   prepare: the table, and `seed` rows for the readers.
--   run --role=writer (1 thread): a batch of `batch` rows of 1 KiB in one INSERT (autocommit: one
--     commit a batch), paced at `pace` batches a second on a fixed schedule (a late batch starts at
--     once; none is skipped). Each commit's start and end (ms of CLOCK_BOOTTIME, the clock of
--     /proc/uptime) go to `log`, one line each, so that a caller can find the commits that overlap
--     an online grow and the seconds without a commit.
--   run --role=reader (any threads): a point select and a range select (100 ids) per event.
local ffi = require("ffi")
ffi.cdef [[
struct swell_timespec { long tv_sec; long tv_nsec; };
int clock_gettime(int clk, struct swell_timespec *tp);
int usleep(unsigned int usec);
]]

sysbench.cmdline.options = {
  role = {"writer or reader", "writer"},
  batch = {"rows per commit", 100},
  pace = {"batches a second (writer)", 4},
  seed = {"rows made by prepare", 2000},
  log = {"the writer's commit log", "/tmp/commits.log"},
}

local CLOCK_BOOTTIME = 7
local ts = ffi.new("struct swell_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_BOOTTIME, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local PAD = string.rep("x", 1024)

local function rows(n)
  local values = {}
  for i = 1, n do
    values[i] = string.format("(%d,'%s')", sysbench.rand.uniform(1, 1000000), PAD)
  end
  return "INSERT INTO stream (k, pad) VALUES " .. table.concat(values, ",")
end

function cmd_prepare()
  local con = sysbench.sql.driver():connect()
  con:query("CREATE TABLE IF NOT EXISTS stream (id BIGINT AUTO_INCREMENT PRIMARY KEY, " ..
            "k INT NOT NULL, pad VARCHAR(1024) NOT NULL, KEY (k)) ENGINE=InnoDB")
  local left = sysbench.opt.seed
  while left > 0 do
    local n = math.min(left, 100)
    con:query(rows(n))
    left = left - n
  end
end

sysbench.cmdline.commands = {prepare = {cmd_prepare, sysbench.cmdline.PARALLEL_COMMAND}}

function thread_init()
  con = sysbench.sql.driver():connect()
  if sysbench.opt.role == "writer" then
    logfile = assert(io.open(sysbench.opt.log, "w"))
    start = now_ms()
    sent = 0
  end
end

function thread_done()
  if logfile then logfile:close() end
  con:disconnect()
end

local function write_batch()
  local due = start + sent * 1000 / sysbench.opt.pace
  local wait = due - now_ms()
  if wait > 0 then ffi.C.usleep(math.floor(wait * 1000)) end
  local t0 = now_ms()
  con:query(rows(sysbench.opt.batch))
  local t1 = now_ms()
  sent = sent + 1
  logfile:write(string.format("%.1f %.1f\n", t0, t1))
  logfile:flush()
end

local function read_some()
  local id = sysbench.rand.uniform(1, sysbench.opt.seed)
  con:query(string.format("SELECT pad FROM stream WHERE id = %d", id))
  con:query(string.format("SELECT COUNT(*), SUM(k) FROM stream WHERE id BETWEEN %d AND %d", id, id + 99))
end

function event()
  if sysbench.opt.role == "writer" then write_batch() else read_some() end
end
