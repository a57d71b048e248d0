--- Inline suggestions drawn as ghost text (extmarks), for Neovim 0.11, which has no
--- inline-completion UI of its own.
---
--- One suggestion at a time: requested with a debounce, the previous request cancelled,
--- shown at the cursor (first line as inline virtual text, the rest as virtual lines),
--- trimmed locally while the user types through it, dropped on any other edit, cursor
--- move or when leaving Insert mode.  Responses for a changed buffer are never shown.

local M = {}

local api = vim.api

M.ns = api.nvim_create_namespace('swiftguard.ghost')

local CANCELLED = -32800 -- LSPErrorCodes.RequestCancelled

--- @class swiftguard.Suggestion
--- @field bufnr integer
--- @field row integer 0-based row of the anchor (where the text goes)
--- @field col integer 0-based byte column of the anchor
--- @field text string what accepting inserts at the anchor
--- @field prefix string the anchor row's text before the anchor, when shown
--- @field changedtick integer the buffer's b:changedtick when shown
--- @field extmark? integer

--- @class swiftguard.Pending
--- @field client vim.lsp.Client
--- @field id integer
--- @field bufnr integer

local state = {
  suggestion = nil, --- @type swiftguard.Suggestion?
  pending = nil, --- @type swiftguard.Pending?
  timer = nil, --- @type uv.uv_timer_t?
  stats = { requests = 0, cancelled = 0, shown = 0, accepted = 0, typed_through = 0 },
}

M.options = {
  debounce_ms = 150,
  hl_group = 'SwiftguardSuggestion',
  --- @type fun(bufnr: integer): vim.lsp.Client?
  get_client = function(_)
    return nil
  end,
}

--- Counters for tests and `:SwiftguardStatus`.
function M.stats()
  return vim.deepcopy(state.stats)
end

--- A copy of the suggestion on screen, or nil.
--- @return swiftguard.Suggestion?
function M.get()
  return state.suggestion and vim.deepcopy(state.suggestion) or nil
end

function M.is_visible()
  return state.suggestion ~= nil
end

local function cursor()
  local pos = api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2]
end

local function line_at(bufnr, row)
  return api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
end

--- Remove the ghost text (the suggestion is forgotten too).
function M.clear()
  local s = state.suggestion
  state.suggestion = nil
  if s and api.nvim_buf_is_valid(s.bufnr) then
    api.nvim_buf_clear_namespace(s.bufnr, M.ns, 0, -1)
  end
end

--- Cancel the request in flight, if any.
function M.cancel_pending()
  local pending = state.pending
  state.pending = nil
  if pending and not pending.client:is_stopped() then
    pending.client:cancel_request(pending.id)
    state.stats.cancelled = state.stats.cancelled + 1
  end
end

local function stop_timer()
  if state.timer then
    state.timer:stop()
  end
end

--- Hide the suggestion, cancel the request in flight and any scheduled one.
function M.dismiss()
  stop_timer()
  M.cancel_pending()
  M.clear()
end

--- The lines of `text` as drawn: tabs expanded, control characters as ^X.
--- @param text string
--- @param tabstop integer
--- @return string[]
function M.display_lines(text, tabstop)
  local tab = string.rep(' ', tabstop)
  local lines = vim.split(text, '\n', { plain = true })
  for i, line in ipairs(lines) do
    lines[i] = vim.fn.strtrans((line:gsub('\t', tab)))
  end
  return lines
end

--- Draw `s` (replacing what is drawn).
--- @param s swiftguard.Suggestion
local function render(s)
  api.nvim_buf_clear_namespace(s.bufnr, M.ns, 0, -1)
  local lines = M.display_lines(s.text, vim.bo[s.bufnr].tabstop)
  local virt_lines = {}
  for i = 2, #lines do
    virt_lines[#virt_lines + 1] = { { lines[i], M.options.hl_group } }
  end
  s.extmark = api.nvim_buf_set_extmark(s.bufnr, M.ns, s.row, s.col, {
    virt_text = { { lines[1], M.options.hl_group } },
    virt_text_pos = 'inline',
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = 'combine',
    priority = 200,
  })
end

--- Show `text` at (row, col) of `bufnr` as the current suggestion.
--- @param bufnr integer
--- @param row integer 0-based
--- @param col integer 0-based byte column
--- @param text string
function M.show(bufnr, row, col, text)
  M.clear()
  if text == '' then
    return
  end
  local s = {
    bufnr = bufnr,
    row = row,
    col = col,
    text = text,
    prefix = line_at(bufnr, row):sub(1, col),
    changedtick = api.nvim_buf_get_changedtick(bufnr),
  }
  render(s)
  state.suggestion = s
  state.stats.shown = state.stats.shown + 1
end

--- Keep the suggestion in step with the buffer after an edit or a cursor move.
---
--- Returns 'none' (nothing shown), 'kept' (nothing changed), 'trimmed' (the user typed
--- the suggestion's next characters: they are removed from it), 'done' (typed it all)
--- or 'dismissed'.
--- @return 'none'|'kept'|'trimmed'|'done'|'dismissed'
function M.sync()
  local s = state.suggestion
  if not s then
    return 'none'
  end
  local bufnr = api.nvim_get_current_buf()
  if bufnr ~= s.bufnr or not api.nvim_buf_is_valid(bufnr) then
    M.dismiss()
    return 'dismissed'
  end
  local row, col = cursor()
  local tick = api.nvim_buf_get_changedtick(bufnr)
  local prefix_intact = line_at(bufnr, s.row):sub(1, s.col) == s.prefix
  if row == s.row and col == s.col and tick == s.changedtick and prefix_intact then
    return 'kept'
  end
  if prefix_intact and (row > s.row or (row == s.row and col > s.col)) then
    local ok, typed_lines = pcall(api.nvim_buf_get_text, bufnr, s.row, s.col, row, col, {})
    local typed = ok and table.concat(typed_lines, '\n') or ''
    if typed ~= '' and vim.startswith(s.text, typed) then
      state.stats.typed_through = state.stats.typed_through + 1
      local rest = s.text:sub(#typed + 1)
      if rest == '' then
        M.clear()
        return 'done'
      end
      s.text, s.row, s.col = rest, row, col
      s.prefix = line_at(bufnr, row):sub(1, col)
      s.changedtick = tick
      render(s)
      return 'trimmed'
    end
  end
  M.dismiss()
  return 'dismissed'
end

--- The text to show at the cursor for an item, or nil when it does not apply there.
--- @param item lsp.InlineCompletionItem
--- @param bufnr integer
--- @param row integer
--- @param col integer
--- @param encoding string the client's offset encoding
--- @return string?
function M.text_at_cursor(item, bufnr, row, col, encoding)
  local text = item.insertText
  if type(text) == 'table' then
    text = text.value -- a snippet: shown and inserted literally
  end
  if type(text) ~= 'string' or text == '' then
    return nil
  end
  local range = item.range
  if range == nil then
    return text
  end
  -- insertText replaces the range; it must end at the cursor and may start before it on
  -- the same line, in which case the text already there is the suggestion's beginning.
  local line = line_at(bufnr, row)
  if range.start.line ~= row or range['end'].line ~= row then
    return nil
  end
  local ok_start, start_col = pcall(vim.str_byteindex, line, encoding, range.start.character, false)
  local ok_end, end_col = pcall(vim.str_byteindex, line, encoding, range['end'].character, false)
  if not ok_start or not ok_end or end_col ~= col or start_col > col then
    return nil
  end
  local typed = line:sub(start_col + 1, col)
  if not vim.startswith(text, typed) then
    return nil
  end
  return text:sub(#typed + 1)
end

--- Ask the server for a suggestion at the cursor now.
--- @param kind? integer InlineCompletionTriggerKind: 1 invoked (default), 2 automatic
--- @return boolean sent
function M.request(kind)
  stop_timer()
  M.cancel_pending()
  local bufnr = api.nvim_get_current_buf()
  local client = M.options.get_client(bufnr)
  if not client or not client.initialized then
    return false
  end
  local row, col = cursor()
  local tick = api.nvim_buf_get_changedtick(bufnr)
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = kind or 1 }
  local id
  local ok, request_id = client:request('textDocument/inlineCompletion', params, function(err, result)
    if not state.pending or state.pending.id ~= id then
      return -- superseded or cancelled
    end
    state.pending = nil
    if err then
      if err.code ~= CANCELLED then
        vim.lsp.log.warn('swiftguard: inlineCompletion failed', err)
      end
      return
    end
    -- Never show a suggestion for a buffer or position that changed meanwhile.
    if
      not api.nvim_buf_is_valid(bufnr)
      or api.nvim_get_current_buf() ~= bufnr
      or api.nvim_buf_get_changedtick(bufnr) ~= tick
    then
      return
    end
    local now_row, now_col = cursor()
    if now_row ~= row or now_col ~= col then
      return
    end
    local items = result and (result.items or result) or {}
    for _, item in ipairs(items) do
      local text = M.text_at_cursor(item, bufnr, row, col, client.offset_encoding)
      if text and text ~= '' then
        M.show(bufnr, row, col, text)
        return
      end
    end
  end, bufnr)
  if not ok or not request_id then
    return false
  end
  id = request_id
  state.pending = { client = client, id = request_id, bufnr = bufnr }
  state.stats.requests = state.stats.requests + 1
  return true
end

--- Request after `debounce_ms` of quiet; the request in flight is cancelled at once.
function M.schedule()
  M.cancel_pending()
  state.timer = state.timer or vim.uv.new_timer()
  state.timer:stop()
  state.timer:start(
    M.options.debounce_ms,
    0,
    vim.schedule_wrap(function()
      if api.nvim_get_mode().mode:sub(1, 1) == 'i' then
        M.request(2)
      end
    end)
  )
end

--- Insert the suggestion at its anchor and put the cursor after it.
--- @return boolean accepted
function M.accept()
  local outcome = M.sync()
  local s = state.suggestion
  if not s or (outcome ~= 'kept' and outcome ~= 'trimmed') then
    return false
  end
  stop_timer()
  M.cancel_pending()
  M.clear()
  local lines = vim.split(s.text, '\n', { plain = true })
  api.nvim_buf_set_text(s.bufnr, s.row, s.col, s.row, s.col, lines)
  local end_row = s.row + #lines - 1
  local end_col = (#lines == 1 and s.col or 0) + #lines[#lines]
  api.nvim_win_set_cursor(0, { end_row + 1, end_col })
  state.stats.accepted = state.stats.accepted + 1
  return true
end

--- Follow the buffer in Insert mode: buffer-local autocommands.
--- @param bufnr integer
function M.attach(bufnr)
  local group = api.nvim_create_augroup('swiftguard.ghost.' .. bufnr, { clear = true })
  api.nvim_create_autocmd('TextChangedI', {
    group = group,
    buffer = bufnr,
    callback = function()
      local outcome = M.sync()
      if outcome ~= 'trimmed' and outcome ~= 'kept' then
        M.schedule()
      end
    end,
  })
  api.nvim_create_autocmd('CursorMovedI', {
    group = group,
    buffer = bufnr,
    callback = function()
      M.sync()
    end,
  })
  api.nvim_create_autocmd('InsertEnter', {
    group = group,
    buffer = bufnr,
    callback = function()
      M.schedule()
    end,
  })
  api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      M.dismiss()
    end,
  })
end

--- @param bufnr integer
function M.detach(bufnr)
  pcall(api.nvim_del_augroup_by_name, 'swiftguard.ghost.' .. bufnr)
  local s = state.suggestion
  if s and s.bufnr == bufnr then
    M.dismiss()
  end
end

return M
