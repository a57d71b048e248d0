--- Swiftguard for Neovim >= 0.11: registers the `swiftguard` language server and shows its
--- inline completions (native `vim.lsp.inline_completion` on 0.12+, ghost text drawn by
--- this plugin on 0.11).
---
--- ```lua
--- require('swiftguard').setup({ init_options = { maxNewTokens = 64 } })
--- ```

local ghost = require('swiftguard.ghost')

local M = {}

local NAME = 'swiftguard'

--- @class swiftguard.Keymaps
--- @field accept string|false Insert-mode key that accepts the suggestion (falls through to the key itself otherwise)
--- @field dismiss string|false Insert-mode key that hides the suggestion
--- @field trigger string|false Insert-mode key that asks for a suggestion now

--- @class swiftguard.Options
--- @field cmd string[] the server command (stdio)
--- @field filetypes string[]
--- @field root_markers string[]
--- @field init_options table server settings (model, device, dtype, maxNewTokens, contextTokens, enable, logLevel, trustRemoteCode)
--- @field inline 'auto'|'native'|'ghost'|false how suggestions are shown
--- @field popup boolean also offer the suggestion in the completion menu (vim.lsp.completion)
--- @field debounce_ms integer quiet time before an automatic request (ghost text)
--- @field keymaps swiftguard.Keymaps
--- @field notify boolean report a missing command or a crashed server with vim.notify
M.defaults = {
  cmd = { 'swiftguard', 'serve' },
  filetypes = { 'python', 'javascript', 'javascriptreact', 'typescript', 'typescriptreact', 'go', 'java', 'c', 'cpp', 'rust' },
  root_markers = { '.git', 'pyproject.toml', 'package.json', 'go.mod', 'Cargo.toml', 'pom.xml' },
  init_options = {},
  inline = 'auto',
  popup = false,
  debounce_ms = 150,
  keymaps = { accept = '<Tab>', dismiss = false, trigger = false },
  notify = true,
}

--- @type swiftguard.Options
M.options = vim.deepcopy(M.defaults)

--- Which inline UI is in use: 'native', 'ghost' or false.
M.mode = false

local function notify(message, level)
  if M.options.notify then
    vim.schedule(function()
      vim.notify('Swiftguard: ' .. message, level)
    end)
  end
end

--- The running swiftguard client for a buffer (default: current), if any.
--- @param bufnr? integer
--- @return vim.lsp.Client?
function M.get_client(bufnr)
  return vim.lsp.get_clients({ bufnr = bufnr or vim.api.nvim_get_current_buf(), name = NAME })[1]
end

local function resolve_mode(inline)
  local native = vim.lsp.inline_completion ~= nil
  if inline == 'auto' then
    return native and 'native' or 'ghost'
  end
  if inline == 'native' and not native then
    notify("inline = 'native' needs Neovim 0.12+; drawing ghost text instead", vim.log.levels.WARN)
    return 'ghost'
  end
  return inline
end

local function on_attach(client, bufnr)
  if M.mode == 'native' then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
  elseif M.mode == 'ghost' then
    ghost.attach(bufnr)
  end
  if M.options.popup and vim.lsp.completion then
    vim.lsp.completion.enable(true, client.id, bufnr, { autotrigger = false })
  end
end

local function on_exit(code, signal, client_id)
  ghost.dismiss()
  if code ~= 0 or (signal ~= 0 and signal ~= 15) then
    notify(
      ('the server (client %d) exited with code %d, signal %d. Its error output is in the LSP log (:SwiftguardLog).'):format(
        client_id,
        code,
        signal
      ),
      vim.log.levels.ERROR
    )
  end
end

--- Whether a suggestion is on screen.
function M.is_visible()
  if M.mode == 'ghost' then
    return ghost.is_visible()
  end
  return false
end

--- Ask for a suggestion at the cursor now (ghost text mode; the native UI requests by itself).
--- @return boolean sent
function M.trigger()
  if M.mode ~= 'ghost' then
    return false
  end
  return ghost.request(1)
end

--- Accept the suggestion on screen.
--- @return boolean accepted
function M.accept()
  if M.mode == 'native' then
    return vim.lsp.inline_completion.get()
  end
  return ghost.accept()
end

--- Hide the suggestion and cancel pending requests.
function M.dismiss()
  ghost.dismiss()
end

--- The suggestion on screen in ghost text mode: { bufnr, row, col, text } (0-based), or nil.
function M.get_suggestion()
  return ghost.get()
end

--- Request counters of the ghost text UI.
function M.stats()
  return ghost.stats()
end

--- The server's `swiftguard.status`, passed to `callback(err, status)`.
--- @param callback fun(err: table?, status: table?)
--- @param bufnr? integer
function M.status(callback, bufnr)
  local client = M.get_client(bufnr)
  if not client then
    callback({ message = 'the swiftguard server is not attached to this buffer' }, nil)
    return
  end
  client:request('workspace/executeCommand', { command = 'swiftguard.status', arguments = {} }, function(err, result)
    callback(err, result)
  end, bufnr)
end

--- Change server settings at run time (merged into the current ones).
--- @param settings table e.g. { maxNewTokens = 64 }
function M.configure(settings)
  for _, client in ipairs(vim.lsp.get_clients({ name = NAME })) do
    client.settings = vim.tbl_deep_extend('force', client.settings or {}, { swiftguard = settings })
    client:notify('workspace/didChangeConfiguration', { settings = client.settings })
  end
  M.options.init_options = vim.tbl_deep_extend('force', M.options.init_options, settings)
end

--- Turn completions off or on (the server stays up and unloads the model when off).
function M.toggle()
  local enabled = M.options.init_options.enable ~= false
  M.configure({ enable = not enabled })
  ghost.dismiss()
  vim.notify(('Swiftguard completions %s'):format(enabled and 'off' or 'on'))
end

--- Insert-mode key: accept when a suggestion is shown, else the key itself.
local function accept_key(key)
  return function()
    if M.mode == 'native' then
      return vim.lsp.inline_completion.get() and '' or key
    end
    if ghost.is_visible() then
      return '<Cmd>lua require("swiftguard").accept()<CR>'
    end
    return key
  end
end

--- Insert-mode key: dismiss when a suggestion is shown, else the key itself.
local function dismiss_key(key)
  return function()
    if ghost.is_visible() then
      return '<Cmd>lua require("swiftguard").dismiss()<CR>'
    end
    return key
  end
end

local function set_keymaps(keymaps)
  if keymaps.accept then
    vim.keymap.set('i', keymaps.accept, accept_key(keymaps.accept), {
      expr = true,
      desc = 'Swiftguard: accept the suggestion',
    })
  end
  if keymaps.dismiss then
    vim.keymap.set('i', keymaps.dismiss, dismiss_key(keymaps.dismiss), {
      expr = true,
      desc = 'Swiftguard: dismiss the suggestion',
    })
  end
  if keymaps.trigger then
    vim.keymap.set('i', keymaps.trigger, function()
      M.trigger()
    end, { desc = 'Swiftguard: suggest now' })
  end
end

local function print_status()
  M.status(function(err, status)
    vim.schedule(function()
      if err then
        vim.notify('Swiftguard: ' .. (err.message or vim.inspect(err)), vim.log.levels.WARN)
        return
      end
      vim.notify(vim.inspect({ server = status, ui = M.mode, ghost = ghost.stats() }))
    end)
  end)
end

local function create_commands()
  local command = vim.api.nvim_create_user_command
  command('SwiftguardStatus', print_status, { desc = "Show the server's swiftguard.status" })
  command('SwiftguardToggle', M.toggle, { desc = 'Turn Swiftguard completions off or on' })
  command('SwiftguardReload', function()
    local client = M.get_client()
    if client then
      client:exec_cmd({ title = 'Reload', command = 'swiftguard.restart', arguments = {} })
    end
  end, { desc = 'Reload the model' })
  command('SwiftguardLog', function()
    vim.cmd.tabnew(vim.lsp.get_log_path())
  end, { desc = 'Open the LSP log (the server logs to stderr)' })
end

--- Register and enable the server; set up the inline UI and key maps.
--- @param opts? swiftguard.Options
function M.setup(opts)
  if vim.fn.has('nvim-0.11') == 0 then
    vim.notify('Swiftguard needs Neovim 0.11 or later', vim.log.levels.ERROR)
    return
  end
  M.options = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  if opts and opts.cmd then
    M.options.cmd = opts.cmd -- lists are replaced, not merged
  end
  if opts and opts.filetypes then
    M.options.filetypes = opts.filetypes
  end
  local o = M.options
  M.mode = o.inline and resolve_mode(o.inline) or false
  ghost.options.debounce_ms = o.debounce_ms
  ghost.options.get_client = M.get_client
  vim.api.nvim_set_hl(0, 'SwiftguardSuggestion', { link = 'Comment', default = true })

  if type(o.cmd) == 'table' and vim.fn.executable(o.cmd[1]) == 0 then
    notify(
      ('cannot start the server: %q is not executable (cmd = %s). Install swiftguard or pass cmd to setup().'):format(
        tostring(o.cmd[1]),
        table.concat(o.cmd, ' ')
      ),
      vim.log.levels.ERROR
    )
  end

  vim.lsp.config(NAME, {
    cmd = o.cmd,
    filetypes = o.filetypes,
    root_markers = o.root_markers,
    init_options = o.init_options,
    settings = { swiftguard = o.init_options },
    capabilities = { textDocument = { inlineCompletion = { dynamicRegistration = false } } },
    on_attach = on_attach,
    on_exit = on_exit,
  })
  vim.lsp.enable(NAME)

  local group = vim.api.nvim_create_augroup('swiftguard', { clear = true })
  -- The server answers one request per document at a time (a newer one supersedes the
  -- older): when the completion menu asks, the ghost text's request must not win.
  vim.api.nvim_create_autocmd('LspRequest', {
    group = group,
    callback = function(args)
      local request = args.data.request
      if request and request.type == 'pending' and request.method == 'textDocument/completion' then
        local client = vim.lsp.get_client_by_id(args.data.client_id)
        if client and client.name == NAME then
          ghost.dismiss()
        end
      end
    end,
  })
  vim.api.nvim_create_autocmd('LspDetach', {
    group = group,
    callback = function(args)
      local client = vim.lsp.get_client_by_id(args.data.client_id)
      if client and client.name == NAME then
        ghost.detach(args.buf)
      end
    end,
  })
  set_keymaps(o.keymaps)
  create_commands()
end

return M
