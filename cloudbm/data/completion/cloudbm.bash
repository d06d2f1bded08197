# bash completion for cloudbm                                       -*- shell-script -*-
#
# Install: copy to /usr/share/bash-completion/completions/cloudbm (or source it from ~/.bashrc).
# Server names come from `cloudbm list-servers`, backup ids from `cloudbm --json backup-list`,
# run with the --config/--server/--repo given on the line so far. Both are best effort: they
# give up silently after $CLOUDBM_COMPLETION_TIMEOUT seconds (default 10) or on any error.

_cloudbm_commands="wal-push wal-fetch init retention delete keep verify wal-verify recover
backup-push backup-list backup-show keygen list-servers show-config check diagnose metrics"
# Global options, accepted before the command and after it.
_cloudbm_common_opts="--config --server --repo --pgdata --json -v --verbose -q --quiet"
_cloudbm_global_opts="-h --help --version $_cloudbm_common_opts"

# Options of each command; keep in step with cloudbm/cli/arguments.py
# (tests/unit/test_packaged_files.py compares them with the parser).
_cloudbm_command_opts() {
    case $1 in
        wal-push) echo "--compression" ;;
        retention) echo "--dry-run" ;;
        delete) echo "--force" ;;
        keep) echo "--target --release" ;;
        recover)
            echo "--target-time --target-xid --target-lsn --target-name --target-immediate" \
                "--exclusive --target-tli --target-action --tablespace --standby --delta" \
                "--force --archive-mode --restore-command --jobs --no-progress"
            ;;
        backup-push)
            echo "--label --immediate-checkpoint --no-immediate-checkpoint --bandwidth-limit" \
                "--keep --jobs --no-progress"
            ;;
        keygen) echo "--type" ;;
        check) echo "--nagios" ;;
        wal-verify) echo "--deep" ;;
    esac
    echo "-h --help $_cloudbm_common_opts"
}

# Options that take a value (the next word is not a positional argument).
_cloudbm_takes_value() {
    case $1 in
        --config | --server | --repo | --pgdata | --compression | --target | --target-time | \
            --target-xid | --target-lsn | --target-name | --target-tli | --target-action | \
            --tablespace | --archive-mode | --restore-command | --jobs | --label | \
            --bandwidth-limit | --keep | --type)
            return 0
            ;;
    esac
    return 1
}

# Run this line's cloudbm with its global configuration flags; quiet, bounded, no stdin.
_cloudbm_query() {
    local -a run=("$_cloudbm_exe" "${_cloudbm_globals[@]}" "$@")
    if type -P timeout >/dev/null; then
        run=(timeout "${CLOUDBM_COMPLETION_TIMEOUT:-10}" "${run[@]}")
    fi
    "${run[@]}" </dev/null 2>/dev/null
}

_cloudbm_servers() {
    _cloudbm_query list-servers
}

_cloudbm_backup_ids() {
    echo "latest last oldest first"
    # backup-list --json prints one `"backup_id": "ID",` line per backup.
    _cloudbm_query --json backup-list | sed -n 's/^ *"backup_id": *"\([^"]*\)".*/\1/p'
}

# Add the words of $1 that start with the current word.
_cloudbm_add() {
    mapfile -t -O "${#COMPREPLY[@]}" COMPREPLY < <(compgen -W "$1" -- "$cur")
}

_cloudbm_files() {
    if declare -F _filedir >/dev/null; then
        _filedir "$@"
    else
        compopt -o filenames 2>/dev/null
        local kind=-f
        [[ $1 == -d ]] && kind=-d
        mapfile -t -O "${#COMPREPLY[@]}" COMPREPLY < <(compgen "$kind" -- "$cur")
    fi
}

_cloudbm() {
    local cur prev
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD - 1]}
    COMPREPLY=()
    # `--opt=value`: COMP_WORDBREAKS splits it into --opt, =, value.
    if [[ $cur == = ]]; then
        prev=${COMP_WORDS[COMP_CWORD - 1]}
        cur=
    elif [[ $prev == = ]] && ((COMP_CWORD >= 2)); then
        prev=${COMP_WORDS[COMP_CWORD - 2]}
    fi

    local _cloudbm_exe=${COMP_WORDS[0]}
    _cloudbm_exe=${_cloudbm_exe/#\~/$HOME}
    type -P "$_cloudbm_exe" >/dev/null || _cloudbm_exe=cloudbm
    local -a _cloudbm_globals=() positionals=()
    local command="" word i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        [[ $word == = ]] && continue
        if _cloudbm_takes_value "$word"; then
            ((i++))
            [[ ${COMP_WORDS[i]} == = ]] && ((i++))
            case $word in
                --config | --server | --repo)
                    ((i < COMP_CWORD)) && _cloudbm_globals+=("$word" "${COMP_WORDS[i]}")
                    ;;
            esac
            continue
        fi
        if [[ $word == -* ]]; then
            continue
        elif [[ -z $command ]]; then
            command=$word
        else
            positionals+=("$word")
        fi
    done

    # The value of an option.
    case $prev in
        --config)
            _cloudbm_files
            return
            ;;
        --pgdata)
            _cloudbm_files -d
            return
            ;;
        --server)
            _cloudbm_add "$(_cloudbm_servers)"
            return
            ;;
        --compression)
            _cloudbm_add "zstd lz4 gzip none"
            return
            ;;
        --target | --keep)
            _cloudbm_add "full standalone"
            return
            ;;
        --target-action)
            _cloudbm_add "pause promote shutdown"
            return
            ;;
        --target-tli)
            _cloudbm_add "latest current"
            return
            ;;
        --archive-mode)
            _cloudbm_add "on off"
            return
            ;;
        --type)
            _cloudbm_add "symmetric x25519"
            return
            ;;
        --repo | --target-time | --target-xid | --target-lsn | --target-name | --tablespace | \
            --restore-command | --jobs | --label | --bandwidth-limit)
            return
            ;;
    esac

    if [[ -z $command ]]; then
        if [[ $cur == -* ]]; then
            _cloudbm_add "$_cloudbm_global_opts"
        else
            _cloudbm_add "$_cloudbm_commands"
        fi
        return
    fi

    if [[ $cur == -* ]]; then
        _cloudbm_add "$(_cloudbm_command_opts "$command")"
        return
    fi

    local n=${#positionals[@]}
    case $command in
        retention | backup-list | check | metrics)
            ((n == 0)) && _cloudbm_add "all $(_cloudbm_servers)"
            ;;
        delete | keep | verify | backup-show)
            ((n == 0)) && _cloudbm_add "$(_cloudbm_backup_ids)"
            ;;
        recover)
            # [ID] DEST: an id or a directory first, then the directory.
            if ((n == 0)); then
                _cloudbm_add "$(_cloudbm_backup_ids)"
                _cloudbm_files -d
            elif ((n == 1)); then
                _cloudbm_files -d
            fi
            ;;
        wal-push | keygen)
            ((n == 0)) && _cloudbm_files
            ;;
        wal-fetch)
            ((n == 1)) && _cloudbm_files
            ;;
    esac
}

complete -F _cloudbm cloudbm
