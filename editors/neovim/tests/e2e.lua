-- Headless end-to-end check of the plugin against the real server, used as `-u` by
-- tests/test_neovim.py:  nvim --headless --clean -u editors/neovim/tests/e2e.lua
--
-- Environment: SWIFTGUARD_SCENARIO (complete | missing-command | crash),
-- SWIFTGUARD_PYTHON, SWIFTGUARD_TEST_MODEL, SWIFTGUARD_FILE (a Python file to open),
-- SWIFTGUARD_RESULT (where the JSON result goes).  Exits 0 on success, 1 on failure.

local plugin_root = vim.fn.fnamemodify(debug.getinfo(1, 'S').source:sub(2), ':p:h:h')
vim.opt.runtimepath:prepend(plugin_root)

local env = vim.env
local result = { ok = false, steps = {}, notifications = {} }
local finished = false

local function finish(ok, err)
  if finished then
    return
  end
  finished = true
  result.ok = ok
  result.error = err
  local file = assert(io.open(env.SWIFTGUARD_RESULT, 'w'))
  file:write(vim.json.encode(result))
  file:close()
  vim.cmd(ok and 'qall!' or 'cquit! 1')
end

vim.notify = function(message, level)
  table.insert(result.notifications, { message = tostring(message), level = level or vim.log.levels.INFO })
end

-- Steps run in a coroutine resumed from timers, so that Neovim's main loop (typeahead,
-- mode changes, autocommands, LSP messages) runs between them as it does for a user.
local co
local function resume()
  local ok, err = coroutine.resume(co)
  if not ok then
    finish(false, debug.traceback(co, err))
  elseif coroutine.status(co) == 'dead' then
    finish(true)
  end
end

local function sleep(ms)
  vim.defer_fn(resume, ms)
  coroutine.yield()
end

local function wait_for(what, predicate, timeout_ms)
  local deadline = vim.uv.now() + (timeout_ms or 20000)
  while true do
    local value = predicate()
    if value then
      return value
    end
    if vim.uv.now() > deadline then
      error('timed out waiting for ' .. what, 2)
    end
    sleep(20)
  end
end

local function check(condition, message, ...)
  if not condition then
    error(message:format(...), 2)
  end
end

local function step(name)
  table.insert(result.steps, name)
end

local function feed(keys, remap)
  vim.api.nvim_feedkeys(vim.keycode(keys), remap and 'm' or 'n', false)
end

local function notified(level, pattern)
  for _, note in ipairs(result.notifications) do
    if note.level == level and note.message:find(pattern) then
      return note
    end
  end
end

local function server_status(sg)
  local answer
  sg.status(function(err, status)
    answer = { err = err, status = status }
  end)
  wait_for('swiftguard.status', function()
    return answer
  end, 10000)
  check(answer.err == nil, 'swiftguard.status failed: %s', vim.inspect(answer.err))
  return answer.status
end

local function ghost_marks(ns)
  return vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })
end

local function current_line()
  return vim.api.nvim_get_current_line()
end

local scenarios = {}

function scenarios.complete()
  local sg = require('swiftguard')
  local ghost = require('swiftguard.ghost')
  sg.setup({
    cmd = { env.SWIFTGUARD_PYTHON, '-m', 'lsp_server', 'serve' },
    init_options = { model = env.SWIFTGUARD_TEST_MODEL, dtype = 'float32', maxNewTokens = 8 },
    debounce_ms = 50,
    popup = true,
  })
  check(sg.mode == 'ghost', 'expected the ghost text UI on Neovim 0.11, got %s', tostring(sg.mode))

  vim.cmd.edit(env.SWIFTGUARD_FILE)
  -- No automatic indentation: the checks below compare whole lines.
  vim.bo.indentkeys = ''
  vim.bo.indentexpr = ''
  vim.bo.autoindent = false
  local client = wait_for('the client to attach', function()
    local c = sg.get_client()
    return c and c.initialized and c
  end)
  step('attached')
  wait_for('the model to be ready', function()
    local state = server_status(sg).engine.state
    check(state ~= 'error', 'the model failed to load')
    return state == 'ready'
  end, 60000)
  step('ready')

  -- Insert mode at the end of the empty body line: InsertEnter requests on its own.
  vim.api.nvim_win_set_cursor(0, { 5, 4 })
  feed('A')
  wait_for('Insert mode', function()
    return vim.api.nvim_get_mode().mode == 'i'
  end)
  local suggestion = wait_for('an automatic suggestion', sg.get_suggestion)
  check(suggestion.row == 4 and suggestion.col == 4, 'anchor %d:%d', suggestion.row, suggestion.col)
  local marks = ghost_marks(ghost.ns)
  check(#marks == 1, 'expected one ghost extmark, got %d', #marks)
  local details = marks[1][4]
  check(marks[1][2] == 4 and marks[1][3] == 4, 'extmark at %d:%d', marks[1][2], marks[1][3])
  check(details.virt_text_pos == 'inline', 'virt_text_pos %s', tostring(details.virt_text_pos))
  local first_line = ghost.display_lines(suggestion.text, vim.bo.tabstop)[1]
  check(details.virt_text[1][1] == first_line, 'ghost text %q vs %q', details.virt_text[1][1], first_line)
  check(details.virt_text[1][2] == 'SwiftguardSuggestion', 'highlight %s', tostring(details.virt_text[1][2]))
  result.suggestion = suggestion.text
  step('ghost text shown')

  -- Typing the suggestion's next character trims it locally, without a new request.
  local requests = sg.stats().requests
  local first_char = vim.fn.strcharpart(suggestion.text, 0, 1)
  -- (the tiny model's text is random: a control character is typed literally with CTRL-V)
  vim.api.nvim_feedkeys((first_char:match('%c') and vim.keycode('<C-V>') or '') .. first_char, 'n', false)
  wait_for('the typed character', function()
    return current_line() == '    ' .. first_char
  end)
  sleep(250) -- longer than the debounce: a request would have been sent by now
  local trimmed = sg.get_suggestion()
  check(trimmed ~= nil, 'the suggestion was dropped while typing through it')
  check(trimmed.text == suggestion.text:sub(#first_char + 1), 'trimmed to %q', trimmed.text)
  check(trimmed.col == 4 + #first_char, 'anchor moved to %d', trimmed.col)
  check(sg.stats().requests == requests, 'typing through sent %d request(s)', sg.stats().requests - requests)
  local shown = ghost_marks(ghost.ns)[1][4].virt_text[1][1]
  check(shown == ghost.display_lines(trimmed.text, vim.bo.tabstop)[1], 'ghost text not trimmed: %q', shown)
  step('typed through')

  -- <Tab> accepts: the text lands in the buffer, the ghost text goes, the cursor follows.
  feed('<Tab>', true)
  wait_for('the accepted text', function()
    return current_line() == '    ' .. suggestion.text
  end)
  check(#ghost_marks(ghost.ns) == 0 or sg.get_suggestion() ~= nil, 'ghost text left behind after accepting')
  local cursor = vim.api.nvim_win_get_cursor(0)
  check(cursor[2] == #current_line(), 'cursor at column %d of %d', cursor[2], #current_line())
  check(sg.stats().accepted == 1, 'accepted count %d', sg.stats().accepted)
  step('accepted with <Tab>')

  -- Without a suggestion <Tab> is an ordinary <Tab>.
  sg.dismiss()
  local before_tab = current_line()
  feed('<Tab>', true)
  wait_for('a plain <Tab>', function()
    return current_line() ~= before_tab
  end)
  local added = current_line():sub(#before_tab + 1)
  check(added:match('^%s+$') ~= nil, '<Tab> inserted %q', added)
  step('<Tab> falls through')

  -- An explicit trigger shows a suggestion; <Esc> dismisses it.
  sg.dismiss()
  feed('<Esc>')
  wait_for('Normal mode', function()
    return vim.api.nvim_get_mode().mode == 'n'
  end)
  -- Indented, so that the stop rule cannot end the (random) text at once as a dedent.
  feed('o    ')
  wait_for('Insert mode on a new indented line', function()
    return vim.api.nvim_get_mode().mode == 'i' and current_line() == '    '
  end)
  sg.dismiss() -- the InsertEnter and typing requests
  check(sg.trigger(), 'trigger() sent nothing')
  wait_for('a triggered suggestion', sg.get_suggestion)
  feed('<Esc>')
  wait_for('the ghost text to go on <Esc>', function()
    return vim.api.nvim_get_mode().mode == 'n' and #ghost_marks(ghost.ns) == 0 and sg.get_suggestion() == nil
  end)
  step('dismissed on <Esc>')

  -- A newer request cancels the one in flight ($/cancelRequest), and so does dismissing.
  sg.configure({ maxNewTokens = 4096 })
  sleep(200)
  feed('o')
  wait_for('Insert mode', function()
    return vim.api.nvim_get_mode().mode == 'i'
  end)
  feed('x = ')
  wait_for('typed text', function()
    return current_line() == 'x = '
  end)
  local counts_before = server_status(sg).requests
  local cancelled_before = sg.stats().cancelled
  sg.dismiss()
  check(sg.trigger(), 'trigger() sent nothing')
  sleep(300)
  check(sg.trigger(), 'second trigger() sent nothing')
  sleep(300)
  sg.dismiss()
  check(sg.stats().cancelled - cancelled_before == 2, 'cancel_request called %d times', sg.stats().cancelled - cancelled_before)
  local counts = wait_for('the server to count both cancellations', function()
    local now = server_status(sg).requests
    local stopped = (now.cancelled or 0) - (counts_before.cancelled or 0)
    local superseded = (now.superseded or 0) - (counts_before.superseded or 0)
    return stopped >= 1 and stopped + superseded >= 2 and now
  end, 15000)
  result.requests = counts
  check(not notified(vim.log.levels.ERROR, '.'), 'unexpected error: %s', vim.inspect(result.notifications))
  sg.configure({ maxNewTokens = 8 })
  step('cancelled')

  -- Multi-line suggestions: first line inline, the rest as virtual lines.
  local row = vim.api.nvim_win_get_cursor(0)[1] - 1
  ghost.show(0, row, #current_line(), 'foo(\n    bar)\n')
  local multi = ghost_marks(ghost.ns)
  check(#multi == 1, 'expected one extmark, got %d', #multi)
  check(multi[1][4].virt_text[1][1] == 'foo(', 'first line %q', multi[1][4].virt_text[1][1])
  local virt_lines = multi[1][4].virt_lines
  check(#virt_lines == 2 and virt_lines[1][1][1] == '    bar)' and virt_lines[2][1][1] == '', 'virt_lines %s', vim.inspect(virt_lines))
  ghost.dismiss()
  step('multi-line rendering')

  -- popup = true: the server's textDocument/completion fallback in the completion menu.
  vim.api.nvim_set_current_line('    ') -- indented: see the triggered suggestion above
  vim.api.nvim_win_set_cursor(0, { row + 1, 4 })
  sleep(200) -- the edit's TextChangedI schedules a ghost request: the menu must win over it
  feed('<Cmd>lua vim.lsp.completion.get()<CR>') -- as a key map would call it
  local items = wait_for('the completion menu', function()
    -- (headless Neovim has no screen to draw the menu on: check the completion itself)
    local info = vim.fn.complete_info({ 'mode', 'items' })
    result.completion_mode = info.mode
    return #info.items > 0 and info.items
  end)
  local lsp_item = vim.tbl_get(items[1], 'user_data', 'nvim', 'lsp', 'completion_item') or {}
  check(items[1].menu == 'Swiftguard', 'menu entry %s', vim.inspect(items[1]))
  check(vim.tbl_get(lsp_item, 'textEdit', 'newText') ~= nil and lsp_item.textEdit.newText ~= '', 'no text in %s', vim.inspect(lsp_item))
  step('popup menu')
  feed('<C-e><Esc>')
end

scenarios['missing-command'] = function()
  require('swiftguard').setup({ cmd = { '/nonexistent/swiftguard', 'serve' } })
  local note = wait_for('an error notification', function()
    return notified(vim.log.levels.ERROR, 'not executable')
  end, 5000)
  result.message = note.message
  step('missing command reported')
end

function scenarios.crash()
  require('swiftguard').setup({ cmd = { env.SWIFTGUARD_PYTHON, '-c', 'import sys; sys.exit(3)' } })
  vim.cmd.edit(env.SWIFTGUARD_FILE)
  local note = wait_for('a crash notification', function()
    return notified(vim.log.levels.ERROR, 'exited with code 3')
  end, 15000)
  result.message = note.message
  step('crash reported')
end

-- The server's window/showMessage for a model that fails to load reaches the user
-- through Neovim's own handler (vim.notify).
scenarios['bad-model'] = function()
  require('swiftguard').setup({
    cmd = { env.SWIFTGUARD_PYTHON, '-m', 'lsp_server', 'serve' },
    init_options = { model = '/nonexistent/model', maxNewTokens = 8 },
  })
  vim.cmd.edit(env.SWIFTGUARD_FILE)
  local note = wait_for('the load failure message', function()
    return notified(vim.log.levels.ERROR, 'could not load the model')
  end, 30000)
  result.message = note.message
  step('load failure reported')
end

local scenario = scenarios[env.SWIFTGUARD_SCENARIO or '']
if not scenario then
  finish(false, 'unknown scenario ' .. tostring(env.SWIFTGUARD_SCENARIO))
else
  vim.defer_fn(function()
    finish(false, 'timed out; steps done: ' .. table.concat(result.steps, ', '))
  end, tonumber(env.SWIFTGUARD_TIMEOUT_MS or '') or 90000)
  co = coroutine.create(scenario)
  vim.schedule(resume)
end
